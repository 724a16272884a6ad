//! The iptables tools: which variant to use (legacy or nft), and running their save and
//! restore commands.

use std::fmt;

use crate::command::run;
use crate::config::Family;
use crate::saved::Saved;
use crate::Error;

/// An iptables variant. Both may work in one namespace, but rules must live in one only:
/// the kernel runs both, and a mix is hard to see and to remove.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The x_tables kernel interface (`iptables-legacy`).
    Legacy,
    /// nf_tables through the iptables syntax (`iptables-nft`).
    Nft,
}

impl Backend {
    /// Both variants.
    pub const ALL: [Backend; 2] = [Backend::Legacy, Backend::Nft];

    fn name(self) -> &'static str {
        match self {
            Backend::Legacy => "legacy",
            Backend::Nft => "nft",
        }
    }

    /// The save tool for `family`, like `ip6tables-nft-save`.
    pub fn save_command(self, family: Family) -> String {
        format!("{}-{}-save", family.tool(), self.name())
    }

    /// The restore tool for `family`, like `iptables-legacy-restore`.
    pub fn restore_command(self, family: Family) -> String {
        format!("{}-{}-restore", family.tool(), self.name())
    }

    /// What iptables-save shows for `family`.
    pub fn save(self, family: Family) -> Result<Saved, Error> {
        run(&self.save_command(family), &[], None).map(|text| Saved::parse(&text))
    }

    /// Feeds `input` to iptables-restore `--noflush` for `family`.
    pub fn restore(self, family: Family, input: &str) -> Result<(), Error> {
        let args: &[&str] = match self {
            // The legacy tools share one lock across namespaces: wait for it rather than
            // fail when another pod on the node is being set up at the same moment.
            Backend::Legacy => &["--noflush", "--wait=30"],
            Backend::Nft => &["--noflush"],
        };
        run(&self.restore_command(family), args, Some(input)).map(drop)
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "iptables-{}", self.name())
    }
}

/// Which variant to use: `--iptables-mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IptablesMode {
    /// Detect it, as the known injectors do.
    #[default]
    Auto,
    /// iptables-legacy.
    Legacy,
    /// iptables-nft.
    Nft,
}

/// The chosen variant and why.
#[derive(Clone, Debug)]
pub struct Selection {
    /// The variant.
    pub backend: Backend,
    /// A sentence saying why, for the log.
    pub reason: String,
}

/// Picks the variant. In auto mode, like Kubernetes' iptables-wrapper and Istio: the
/// variant that already holds rules here (the one with more, nft on a tie); if neither
/// holds any, nft when it works, else legacy.
pub fn select(mode: IptablesMode) -> Result<Selection, Error> {
    let forced = |backend, what: &str| Selection {
        backend,
        reason: format!("{what} was asked for"),
    };
    match mode {
        IptablesMode::Legacy => return Ok(forced(Backend::Legacy, "--iptables-mode legacy")),
        IptablesMode::Nft => return Ok(forced(Backend::Nft, "--iptables-mode nft")),
        IptablesMode::Auto => {}
    }
    let legacy = count_rules(Backend::Legacy);
    let nft = count_rules(Backend::Nft);
    let selection = match (legacy, nft) {
        (Err(legacy), Err(nft)) => {
            return Err(Error::NoBackend {
                legacy: Box::new(legacy),
                nft: Box::new(nft),
            })
        }
        (Ok(_), Err(e)) => Selection {
            backend: Backend::Legacy,
            reason: format!("iptables-nft does not work here ({})", first_line(&e)),
        },
        (Err(_), Ok(n)) => Selection {
            backend: Backend::Nft,
            reason: format!("iptables-legacy does not work here; iptables-nft holds {n} rules"),
        },
        (Ok(l), Ok(n)) => Selection {
            backend: choose(l, n),
            reason: format!("iptables-legacy holds {l} rules, iptables-nft {n}"),
        },
    };
    Ok(selection)
}

/// The auto choice when both variants work and hold `legacy` and `nft` rules.
pub fn choose(legacy: usize, nft: usize) -> Backend {
    if legacy > nft {
        Backend::Legacy
    } else {
        Backend::Nft
    }
}

/// Rules of both families in `backend`; an IPv6 tool that fails counts none.
fn count_rules(backend: Backend) -> Result<usize, Error> {
    let v4 = backend.save(Family::V4)?.rule_count();
    let v6 = backend
        .save(Family::V6)
        .map(|s| s.rule_count())
        .unwrap_or(0);
    Ok(v4 + v6)
}

fn first_line(e: &Error) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_names() {
        assert_eq!(Backend::Nft.save_command(Family::V6), "ip6tables-nft-save");
        assert_eq!(
            Backend::Legacy.restore_command(Family::V4),
            "iptables-legacy-restore"
        );
    }

    #[test]
    fn auto_prefers_the_variant_with_rules_then_nft() {
        assert_eq!(choose(0, 0), Backend::Nft);
        assert_eq!(choose(5, 0), Backend::Legacy);
        assert_eq!(choose(0, 5), Backend::Nft);
        assert_eq!(choose(3, 3), Backend::Nft);
        assert_eq!(choose(30, 3), Backend::Legacy);
    }
}
