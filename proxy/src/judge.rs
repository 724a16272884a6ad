//! The gate every new flow passes: wait for a first policy if there is none yet, judge the
//! flow with the policy crate, then log and count the verdict.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use palisade_policy::cluster::is_loopback;
use palisade_policy::compiled::{Flow, Mode};
use palisade_policy::fqdn;
use palisade_policy::policy::Direction;
use palisade_policy::ports::Protocol;
use palisade_policy::verdict::{decide, Action, Verdict};

use crate::config::{Config, FailMode};
use crate::dns::cache::{DnsCache, Resolved};
use crate::flowlog::{self, Entry, Extra, FlowLog};
use crate::metrics;
use crate::report::Reporter;
use crate::state::{Current, PolicyState, Snapshot};
use tokio::sync::watch;

/// A flow about to be judged.
#[derive(Debug, Clone)]
pub struct FlowInfo {
    /// Which side of the pod.
    pub direction: Direction,
    /// The protocol.
    pub protocol: Protocol,
    /// Where the flow comes from.
    pub src: SocketAddr,
    /// Where it goes: for egress to a Service, the backend the proxy picked.
    pub dst: SocketAddr,
    /// The Service the pod asked for, if any.
    pub service: Option<Arc<str>>,
    /// The DNS names the pod resolved to the destination (egress), valid when the flow
    /// started; they keep judging the flow for as long as it is open.
    pub names: Option<Arc<Resolved>>,
    /// The one name the connection named (its checked TLS server name): it is judged as
    /// naming this name only.
    pub named: Option<Arc<str>>,
}

impl FlowInfo {
    /// A flow known only by its ends: no Service, no DNS name.
    pub fn new(direction: Direction, protocol: Protocol, src: SocketAddr, dst: SocketAddr) -> Self {
        Self {
            direction,
            protocol,
            src,
            dst,
            service: None,
            names: None,
            named: None,
        }
    }

    /// The other end, as policies see it (an IPv4-mapped IPv6 address as IPv4).
    pub fn peer(&self) -> IpAddr {
        match self.direction {
            Direction::Ingress => self.src.ip(),
            Direction::Egress => self.dst.ip(),
        }
        .to_canonical()
    }

    /// The flow as the policy crate judges it.
    pub fn as_flow(&self) -> Flow<'_> {
        let flow = Flow {
            direction: self.direction,
            peer: self.peer(),
            port: self.dst.port(),
            protocol: self.protocol,
            names: self.names.as_ref().map_or(&[], |r| &r.names[..]),
        };
        match &self.named {
            Some(name) => flow.only_name(name),
            None => flow,
        }
    }

    /// The same flow, judged from now on as naming `name` only.
    pub fn with_only_name(&self, name: &str) -> Self {
        Self {
            named: Some(Arc::from(name)),
            ..self.clone()
        }
    }

    /// `inbound` or `outbound`, the label metrics use.
    pub fn label(&self) -> &'static str {
        match self.direction {
            Direction::Ingress => "inbound",
            Direction::Egress => "outbound",
        }
    }
}

/// What a flow log line says about a flow, beyond the flow itself.
#[derive(Debug)]
pub struct Line<'a> {
    /// What happened.
    pub action: Action,
    /// The reason's kind.
    pub reason: String,
    /// The reason in words.
    pub detail: String,
    /// The version of the policy that decided.
    pub policy_version: Option<u64>,
    /// Why the line is written when it is not a new flow.
    pub event: Option<&'static str>,
    /// The DNS name through which a `toFQDNs` rule allowed the destination.
    pub fqdn: Option<&'a str>,
    /// An HTTP request or a DNS query the line is about.
    pub extra: Option<Extra<'a>>,
}

/// A verdict and the policy it came from.
#[derive(Debug, Clone)]
pub struct Judgement {
    /// What happens.
    pub action: Action,
    /// The verdict, when a policy gave it (`None`: no policy arrived, the fail mode chose).
    pub verdict: Option<Verdict>,
    /// The policy judged against.
    pub snapshot: Option<Arc<Snapshot>>,
    /// What inspecting the connection's content takes, or why it cannot be inspected.
    pub l7: L7Need,
}

/// Whether a connection's content must be inspected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L7Need {
    /// A rule allows it outright (or it is denied): its bytes are relayed unread.
    None,
    /// Only rules with HTTP conditions allow it: each request is judged.
    Http,
    /// Only `toFQDNs` rules that require SNI allow it: its TLS server name (or each HTTP
    /// request's `Host`) must be an allowed name resolved to the address.
    Sni,
    /// Only rules with conditions this connection cannot be inspected for allow it, so it
    /// is refused: the proxy never lets through more than the policy allows.
    Refused(Uninspectable),
}

/// Why a connection that only rules with L7 conditions allow cannot be inspected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uninspectable {
    /// TLS server names (`serverNames`), which this proxy does not check yet.
    TlsServerNames,
    /// The port is in `palisade.dev/opaque-ports`.
    OpaquePort,
    /// The flow is relayed unread: UDP, or a connection opened before HTTP rules applied.
    Unread,
    /// DNS rules, which are checked for queries to the pod's resolvers only.
    DnsElsewhere,
}

/// Judges flows for every listener.
#[derive(Clone)]
pub struct Judge {
    config: Arc<Config>,
    state: PolicyState,
    log: FlowLog,
    /// Where flow records go; `None` when reporting is off (`--no-flow-reports`).
    reporter: Option<Reporter>,
    next_backend: Arc<AtomicUsize>,
    dns: Arc<DnsCache>,
}

impl Judge {
    /// A judge over the pod's policy state, with an empty DNS cache.
    pub fn new(
        config: Arc<Config>,
        state: PolicyState,
        log: FlowLog,
        reporter: Option<Reporter>,
    ) -> Self {
        let dns = DnsCache::new(config.dns.limits.clone());
        Self {
            config,
            state,
            log,
            reporter,
            next_backend: Arc::new(AtomicUsize::new(0)),
            dns,
        }
    }

    /// The pod's DNS cache: what it resolved.
    pub fn dns(&self) -> &Arc<DnsCache> {
        &self.dns
    }

    /// The configuration.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The policy state.
    pub fn state(&self) -> &PolicyState {
        &self.state
    }

    /// Where a pod's outbound flow to `dst` goes: a Service's backend (picked in turn, as
    /// kube-proxy would spread them) or `dst` itself. `None` when `dst` is a Service port
    /// with no backend. Waits for a first policy like [`Judge::judge`], so that a flow to a
    /// Service is never judged against the Service's own address.
    async fn route(
        &self,
        dst: SocketAddr,
        protocol: Protocol,
    ) -> Option<(SocketAddr, Option<Arc<str>>)> {
        let Some(snapshot) = self.state.wait(self.config.hold).await else {
            return Some((dst, None));
        };
        let services = &snapshot.policy.services;
        match services.lookup(dst.ip(), dst.port(), protocol) {
            None => Some((dst, None)),
            Some(entry) if entry.backends.is_empty() => None,
            Some(entry) => {
                let i = self.next_backend.fetch_add(1, Ordering::Relaxed) % entry.backends.len();
                let (ip, port) = entry.backends[i];
                Some((
                    SocketAddr::new(ip, port),
                    Some(Arc::from(entry.service.as_str())),
                ))
            }
        }
    }

    /// The pod's outbound flow from `src` to `asked`, routed to a Service's backend where
    /// `asked` is a Service port; `None` when that Service port has no backend.
    pub async fn outbound_flow(
        &self,
        src: SocketAddr,
        asked: SocketAddr,
        protocol: Protocol,
    ) -> Option<FlowInfo> {
        let (dst, service) = self.route(asked, protocol).await?;
        let names = self.dns.resolve(dst.ip().to_canonical(), Instant::now());
        Some(FlowInfo {
            direction: Direction::Egress,
            protocol,
            src,
            dst,
            service,
            names: names.map(Arc::new),
            named: None,
        })
    }

    /// Judges a new flow, waiting for a first policy up to the hold time.
    pub async fn judge(&self, flow: &FlowInfo) -> Judgement {
        let snapshot = self.state.wait(self.config.hold).await;
        let j = match &snapshot {
            Some(s) => self.judge_with(s, flow, true),
            None => self.without_policy(flow),
        };
        metrics::counter_flow(flow, j.action);
        if let (Action::Allow, Some(reporter)) = (j.action, &self.reporter) {
            reporter.count(flow, &j);
        }
        if j.action != Action::Allow || self.log.logs_allowed() {
            self.log(flow, &j, None);
        }
        j
    }

    /// Judges a flow against a given policy. `inspectable`: whether its content can still
    /// be inspected (a new flow can; an open flow relayed unread cannot).
    pub fn judge_with(
        &self,
        snapshot: &Arc<Snapshot>,
        flow: &FlowInfo,
        inspectable: bool,
    ) -> Judgement {
        let start = Instant::now();
        let verdict = decide(&snapshot.policy, &flow.as_flow());
        ::metrics::histogram!(metrics::DECISION_SECONDS).record(start.elapsed().as_secs_f64());
        let readable = inspectable && flow.protocol == Protocol::Tcp;
        let l7 = match verdict.inspect {
            _ if verdict.action != Action::Allow => L7Need::None,
            i if i.tls => L7Need::Refused(Uninspectable::TlsServerNames),
            i if i.dns => L7Need::Refused(Uninspectable::DnsElsewhere),
            i if (i.http || i.sni) && self.config.opaque_ports.contains(&flow.dst.port()) => {
                L7Need::Refused(Uninspectable::OpaquePort)
            }
            i if (i.http || i.sni) && !readable => L7Need::Refused(Uninspectable::Unread),
            i if i.http => L7Need::Http,
            i if i.sni => L7Need::Sni,
            _ => L7Need::None,
        };
        let action = match (l7, snapshot.policy.mode) {
            (L7Need::Refused(_), Mode::Enforce) => Action::Deny,
            (L7Need::Refused(_), Mode::Audit) => Action::WouldDeny,
            _ => verdict.action,
        };
        Judgement {
            action,
            verdict: Some(verdict),
            snapshot: Some(snapshot.clone()),
            l7,
        }
    }

    /// The verdict when no policy arrived in time: the fail mode's, except for the pod's
    /// own traffic and its node.
    pub fn without_policy(&self, flow: &FlowInfo) -> Judgement {
        let peer = flow.peer();
        let action = if is_loopback(peer)
            || self.config.pod_ips.contains(&peer)
            || self.config.node_ips.contains(&peer)
        {
            Action::Allow
        } else {
            match self.config.fail_mode {
                FailMode::Closed => Action::Deny,
                FailMode::Open => Action::Allow,
            }
        };
        Judgement {
            action,
            verdict: None,
            snapshot: None,
            l7: L7Need::None,
        }
    }

    /// A receiver of new policies, for an open flow to watch.
    pub fn policies(&self) -> watch::Receiver<Current> {
        let mut rx = self.state.subscribe();
        rx.mark_unchanged();
        rx
    }

    /// Resolves when a new policy denies the open `flow` (it is re-judged on each one), and
    /// counts and logs that; never resolves if no policy does. `inspected`: whether the
    /// flow's requests are being judged one by one (otherwise its bytes are relayed unread).
    pub async fn until_denied(
        &self,
        flow: &FlowInfo,
        inspected: bool,
        policies: &mut watch::Receiver<Current>,
    ) -> Judgement {
        loop {
            if policies.changed().await.is_err() {
                // The policy state outlives every flow; there is nothing more to watch.
                std::future::pending::<()>().await;
            }
            let Some(snapshot) = policies.borrow_and_update().clone() else {
                continue;
            };
            let j = self.judge_with(&snapshot, flow, inspected);
            if j.action == Action::Deny {
                ::metrics::counter!(metrics::CLOSED_BY_POLICY, "direction" => flow.label())
                    .increment(1);
                self.log(flow, &j, Some("closed-by-policy"));
                return j;
            }
        }
    }

    /// Writes the flow log line for a verdict; `event` says why when it is not a new flow.
    pub fn log(&self, flow: &FlowInfo, j: &Judgement, event: Option<&'static str>) {
        let (reason, detail) = match (&j.verdict, &j.snapshot) {
            (Some(v), Some(s)) if matches!(j.l7, L7Need::Refused(_)) => (
                "l7-not-inspected".to_owned(),
                format!(
                    "{}, {}; the proxy refuses rather than allow more",
                    v.describe(&s.policy, &flow.as_flow()),
                    match j.l7 {
                        L7Need::Refused(Uninspectable::OpaquePort) => format!(
                            "with HTTP rules, but port {} is opaque (palisade.dev/opaque-ports) \
                             and never inspected",
                            flow.dst.port()
                        ),
                        L7Need::Refused(Uninspectable::Unread) => "with HTTP rules or \
                            requireSNI, which a flow relayed unread (UDP, or opened before they \
                            applied) cannot be held to"
                            .to_owned(),
                        L7Need::Refused(Uninspectable::DnsElsewhere) => "with DNS rules, which \
                            are checked only for queries to the pod's resolvers"
                            .to_owned(),
                        _ => "which asks for TLS server names; this proxy does not check them yet"
                            .to_owned(),
                    }
                ),
            ),
            (Some(v), Some(s)) => (v.reason.to_string(), v.describe(&s.policy, &flow.as_flow())),
            _ => (
                "no-policy".to_owned(),
                format!(
                    "no policy arrived within {:?}; fail mode {}",
                    self.config.hold,
                    match self.config.fail_mode {
                        FailMode::Closed => "closed",
                        FailMode::Open => "open",
                    }
                ),
            ),
        };
        let as_flow = flow.as_flow();
        let fqdn = j.verdict.and_then(|v| v.name(&as_flow)).map(fqdn::display);
        self.write_log(
            flow,
            Line {
                action: j.action,
                reason,
                detail,
                policy_version: j.snapshot.as_ref().map(|s| s.version),
                event,
                fqdn,
                extra: None,
            },
        );
    }

    /// Refuses a flow aimed at one of the proxy's own ports, which the proxy never relays (it
    /// would loop into itself): from outside the pod, or from the pod's app straight to a
    /// listener on loopback (never redirected). Counted, and logged as `proxy-port`.
    pub fn refuse_own_port(&self, flow: &FlowInfo) {
        metrics::counter_flow(flow, Action::Deny);
        let port = flow.dst.port();
        let detail = match flow.direction {
            Direction::Ingress => format!(
                "port {port} is the proxy's own; connections to it from outside the pod are refused"
            ),
            Direction::Egress => format!(
                "port {port} is the proxy's own listener, which the pod's connections reach only through redirection; refused"
            ),
        };
        self.write_log(
            flow,
            Line {
                action: Action::Deny,
                reason: "proxy-port".to_owned(),
                detail,
                policy_version: None,
                event: None,
                fqdn: None,
                extra: None,
            },
        );
    }

    /// Writes the flow log line of a connection or message refused for what it carried,
    /// against the policy in force.
    pub fn log_refusal(
        &self,
        flow: &FlowInfo,
        reason: &str,
        detail: String,
        extra: Option<Extra<'_>>,
    ) {
        self.write_log(
            flow,
            Line {
                action: Action::Deny,
                reason: reason.to_owned(),
                detail,
                policy_version: self.state.current().map(|s| s.version),
                event: None,
                fqdn: None,
                extra,
            },
        );
    }

    /// Writes a flow log line about `flow`.
    pub fn write_log(&self, flow: &FlowInfo, line: Line<'_>) {
        if let (false, Some(reporter)) = (line.action == Action::Allow, &self.reporter) {
            // The policies that refused it: those whose HTTP rules did not allow a request,
            // else those that isolate the pod's side (none: the fail mode or the proxy).
            let request = match &line.extra {
                Some(Extra::Request(r)) => Some(r),
                _ => None,
            };
            let policies = match request.and_then(|r| r.policy) {
                Some(p) => p.split(", ").map(str::to_owned).collect(),
                None if line.reason == "no-policy" || line.reason == "proxy-port" => Vec::new(),
                None => self.state.current().map_or_else(Vec::new, |s| {
                    s.policy
                        .side(flow.direction)
                        .policies
                        .iter()
                        .map(|p| p.id.to_string())
                        .collect()
                }),
            };
            reporter.record(flow, line.action, &line.reason, policies, request);
        }
        self.log.write(&Entry {
            time: flowlog::now(),
            pod: &self.config.pod,
            direction: flow.direction,
            action: line.action.as_str(),
            protocol: flow.protocol,
            src: flow.src,
            dst: flow.dst,
            service: flow.service.as_deref(),
            reason: line.reason,
            detail: line.detail,
            policy_version: line.policy_version,
            event: line.event,
            fqdn: line.fqdn,
            extra: line.extra,
        });
    }

    /// Whether allowed flows (and requests) are logged too.
    pub fn logs_allowed(&self) -> bool {
        self.log.logs_allowed()
    }
}
