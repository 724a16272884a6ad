//! What `palisade init` does to a network namespace: install the rules, verify them,
//! remove them, or print what installing would run.

use std::fmt::Write as _;

use crate::config::{Config, Family};
use crate::drift::{diff, Drift, RuleDrift};
use crate::iptables::Backend;
use crate::restore::{install_input, removal_input};
use crate::rules::build;
use crate::saved::Saved;
use crate::{routes, Error};

/// What `install` would feed to iptables-restore on a namespace without our rules, and
/// the routing commands it would run, as one text. Reads nothing and needs no privilege.
pub fn dry_run(config: &Config, families: &[Family]) -> String {
    let mut out = String::new();
    for &family in families {
        let _ = writeln!(out, "# {family} rules: {}-restore --noflush", family.tool());
        out.push_str(&install_input(&build(config, family), &Saved::default()));
    }
    out.push_str(
        "# policy routing: diverted UDP, and the app's replies to transparent inbound TCP\n",
    );
    for &family in families {
        for command in routes::dry_run_commands(config, family) {
            let _ = writeln!(out, "{command}");
        }
    }
    out
}

/// Installs the routes and rules of each family; running it again changes nothing. The
/// routes go first: without marked packets they do nothing, and marks without them would
/// let diverted UDP leave. A failure with IPv6 is [`Error::Ipv6Required`].
pub fn install(config: &Config, backend: Backend, families: &[Family]) -> Result<(), Error> {
    for &family in families {
        let result = install_family(config, backend, family);
        match family {
            Family::V4 => result?,
            Family::V6 => result.map_err(|e| Error::Ipv6Required(Box::new(e)))?,
        }
    }
    Ok(())
}

fn install_family(config: &Config, backend: Backend, family: Family) -> Result<(), Error> {
    routes::install(config, family)?;
    let installed = backend.save(family)?;
    let input = install_input(&build(config, family), &installed);
    backend.restore(family, &input)
}

/// Compares what is installed with what [`install`] would install.
pub fn verify(config: &Config, backend: Backend, families: &[Family]) -> Result<Drift, Error> {
    let mut drift = Drift::default();
    for &family in families {
        let intended = build(config, family).render();
        let installed = backend.save(family)?.render();
        if intended != installed {
            drift.rules.push(RuleDrift {
                family,
                tool: backend.save_command(family),
                lines: diff(&intended, &installed),
            });
        }
        drift.routes.extend(routes::check(config, family)?);
    }
    Ok(drift)
}

/// Removes our chains, the jumps into them and our routes from each of `backends`, and
/// nothing else. Families in `required` must be readable; others are skipped when their
/// tools do not work here (no rules can be there then). Returns what was removed.
pub fn remove(
    config: &Config,
    backends: &[Backend],
    required: &[Family],
) -> Result<Vec<String>, Error> {
    let mut removed = Vec::new();
    for &backend in backends {
        for family in Family::ALL {
            let installed = match backend.save(family) {
                Ok(saved) => saved,
                Err(e) if backends.len() == 1 && required.contains(&family) => return Err(e),
                Err(_) => continue,
            };
            if let Some(input) = removal_input(&installed) {
                backend.restore(family, &input)?;
                let chains: Vec<String> = installed
                    .ours()
                    .tables
                    .iter()
                    .flat_map(|t| {
                        t.our_chains()
                            .map(|c| format!("{}/{c}", t.name))
                            .collect::<Vec<_>>()
                    })
                    .collect();
                removed.push(format!(
                    "{family} chains from {backend}: {}",
                    chains.join(", ")
                ));
            }
        }
    }
    for family in Family::ALL {
        match routes::remove(config, family) {
            Ok(()) => {}
            Err(e) if required.contains(&family) => return Err(e),
            Err(_) => {}
        }
    }
    Ok(removed)
}
