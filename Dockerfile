# The one image every part of palisade runs from: the controller, the init container
# (`palisade init`, which needs iptables and ip) and the sidecar (`palisade proxy`).
#   docker build -t palisade/palisade:0.1.0 .
#
# 1. palisade, built for glibc as the benchmarks measure it (bench/README.md: glibc's
#    allocator, and the proxy's code laid out first by build.rs), with the libraries it
#    loads; the same glibc as the tools' below (both bookworm). The toolchain is the one
#    link/hot-symbols.txt was written with: symbol names change with the compiler.
FROM rust:1.95-bookworm AS build
RUN apt-get update -q && apt-get install -y -q libcap2-bin
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin palisade \
 && install -D target/release/palisade /out/usr/local/bin/palisade \
 && ldd target/release/palisade | awk '/=>/ { print $3 } /ld-linux/ { print $1 }' \
    | xargs -r -I{} cp -L --parents {} /out \
 # The proxy runs as uid 2190 and needs CAP_NET_RAW for UDP (transparent and raw
 # sockets): permitted, not effective, so that the controller, which drops every
 # capability, can still run the same binary. The proxy raises it into its effective set
 # at start (README, "Capabilities"); the lab gives its copy of the binary the same.
 && setcap cap_net_raw=p /out/usr/local/bin/palisade

# 2. iptables and ip for `palisade init`, with exactly the libraries they load, copied
#    into the empty base (both the nft and legacy variants: init picks the one the node
#    uses).
FROM debian:bookworm-slim AS tools
RUN apt-get update -q && apt-get install -y -q --no-install-recommends iptables iproute2
RUN set -eu; mkdir -p /out/run /out/tmp; \
    for f in /usr/sbin/xtables-nft-multi /usr/sbin/xtables-legacy-multi /usr/bin/ip \
             /usr/lib/x86_64-linux-gnu/xtables/*.so; do \
      cp -a --parents "$f" /out; \
      ldd "$f" | awk '/=>/ { print $3 } /ld-linux/ { print $1 }' | xargs -r -I{} cp -L --parents {} /out; \
    done; \
    for t in iptables ip6tables; do \
      for v in nft legacy; do \
        for s in "" -save -restore; do ln -s xtables-$v-multi /out/usr/sbin/$t-$v$s; done; \
      done; \
      for s in "" -save -restore; do ln -s xtables-nft-multi /out/usr/sbin/$t$s; done; \
    done

FROM scratch
COPY --from=tools /out /
COPY --from=build /out /
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# The controller's user; the injected containers set their own (init: 0, proxy: 2190).
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/palisade"]
