//! iptables-restore input: to bring what is installed to what we intend, or to remove ours.
//!
//! Both are fed to `iptables-restore --noflush`, so only the chains we name change, and
//! each table changes in one atomic commit: there is never a moment without our rules.

use std::fmt::Write as _;

use crate::saved::{is_ours, table_rank, Rule, Saved, Table};

/// The input that installs `desired` over `installed` (both of one family). Declaring our
/// chains (`:PALISADE_X - [0:0]`) flushes and refills them; jumps from built-in chains are
/// inserted at the top only when missing, stale or duplicate jumps into our chains are
/// deleted, and chains of ours that are no longer wanted are removed.
pub fn install_input(desired: &Saved, installed: &Saved) -> String {
    let installed = installed.ours();
    let mut names: Vec<&str> = desired.tables.iter().map(|t| t.name.as_str()).collect();
    for table in &installed.tables {
        if !names.contains(&table.name.as_str()) {
            names.push(&table.name);
        }
    }
    names.sort_by_key(|n| (table_rank(n), n.to_string()));

    let empty = Table::default();
    let mut out = String::new();
    for name in names {
        let want = desired.table(name).unwrap_or(&empty);
        let have = installed.table(name).unwrap_or(&empty);
        let _ = writeln!(out, "*{name}");
        for chain in want.our_chains() {
            let _ = writeln!(out, ":{chain} - [0:0]");
        }
        // Keep each wanted jump once; delete the rest.
        let wanted: Vec<&Rule> = want
            .rules
            .iter()
            .filter(|r| r.is_jump_into_ours())
            .collect();
        let mut kept: Vec<&Rule> = Vec::new();
        for rule in have.rules.iter().filter(|r| r.is_jump_into_ours()) {
            if wanted.contains(&rule) && !kept.contains(&rule) {
                kept.push(rule);
            } else {
                let _ = writeln!(out, "-D {} {}", rule.chain, rule.spec);
            }
        }
        // At the top of the built-in chain, before anyone else's rules; several jumps into
        // one chain keep their order.
        let mut inserted: Vec<&str> = Vec::new();
        for rule in wanted.iter().filter(|r| !kept.contains(r)) {
            inserted.push(&rule.chain);
            let position = inserted.iter().filter(|c| **c == rule.chain).count();
            let _ = writeln!(out, "-I {} {position} {}", rule.chain, rule.spec);
        }
        for rule in want.rules.iter().filter(|r| is_ours(&r.chain)) {
            let _ = writeln!(out, "-A {} {}", rule.chain, rule.spec);
        }
        let stale: Vec<&str> = have
            .our_chains()
            .filter(|c| !want.chains.iter().any(|w| w == c))
            .collect();
        for chain in &stale {
            let _ = writeln!(out, "-F {chain}");
        }
        for chain in &stale {
            let _ = writeln!(out, "-X {chain}");
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// The input that removes everything of ours from `installed`, touching nothing else;
/// `None` when there is nothing to remove.
pub fn removal_input(installed: &Saved) -> Option<String> {
    let installed = installed.ours();
    if installed.tables.is_empty() {
        return None;
    }
    let mut out = String::new();
    for table in &installed.tables {
        let _ = writeln!(out, "*{}", table.name);
        // Each -D deletes one copy, so a duplicated jump is listed (and deleted) twice.
        for rule in table.rules.iter().filter(|r| r.is_jump_into_ours()) {
            let _ = writeln!(out, "-D {} {}", rule.chain, rule.spec);
        }
        for chain in table.our_chains() {
            let _ = writeln!(out, "-F {chain}");
        }
        for chain in table.our_chains() {
            let _ = writeln!(out, "-X {chain}");
        }
        out.push_str("COMMIT\n");
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Family};
    use crate::rules::build;

    /// The rules of our filter chains for a default config, IPv4, as `-A` lines (what
    /// they are is rules.rs's business; here, only where they go).
    fn filter_rules() -> String {
        let text = build(&Config::default(), Family::V4).render();
        let ours = text
            .lines()
            .filter(|l| l.starts_with("-A PALISADE_FILTER_"));
        ours.map(|l| format!("{l}\n")).collect()
    }

    #[test]
    fn on_an_empty_namespace_everything_is_added() {
        let rules = filter_rules();
        let input = install_input(&build(&Config::default(), Family::V4), &Saved::default());
        let filter = input.split("*filter\n").nth(1).unwrap();
        assert_eq!(
            filter,
            format!(
                ":PALISADE_FILTER_IN - [0:0]\n:PALISADE_FILTER_OUT - [0:0]\n\
                 -I INPUT 1 ! -p tcp -j PALISADE_FILTER_IN\n-I OUTPUT 1 ! -p tcp -j PALISADE_FILTER_OUT\n\
                 {rules}COMMIT\n"
            )
        );
        assert!(input.starts_with("*nat\n:PALISADE_INBOUND - [0:0]\n:PALISADE_OUTPUT - [0:0]\n"));
        assert!(!input.contains("-D ") && !input.contains("-X "));
    }

    #[test]
    fn a_rerun_adds_no_jump_and_fixes_stale_ones() {
        let rules = filter_rules();
        let desired = build(&Config::default(), Family::V4);
        // A jump doubled by hand, and the single SCTP chain of an older palisade.
        let installed = Saved::parse(
            "*filter\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:PALISADE_FILTER - [0:0]\n\
             :PALISADE_FILTER_IN - [0:0]\n-A INPUT ! -p tcp -j PALISADE_FILTER_IN\n\
             -A INPUT ! -p tcp -j PALISADE_FILTER_IN\n-A INPUT -s 10.0.0.1/32 -j ACCEPT\n\
             -A OUTPUT -j PALISADE_FILTER\n-A PALISADE_FILTER -p sctp -j DROP\nCOMMIT\n",
        );
        let input = install_input(&desired, &installed);
        let filter = input.split("*filter\n").nth(1).unwrap();
        assert_eq!(
            filter,
            format!(
                ":PALISADE_FILTER_IN - [0:0]\n:PALISADE_FILTER_OUT - [0:0]\n\
                 -D INPUT ! -p tcp -j PALISADE_FILTER_IN\n-D OUTPUT -j PALISADE_FILTER\n\
                 -I OUTPUT 1 ! -p tcp -j PALISADE_FILTER_OUT\n{rules}\
                 -F PALISADE_FILTER\n-X PALISADE_FILTER\nCOMMIT\n"
            )
        );
    }

    #[test]
    fn removal_touches_only_ours() {
        let installed = Saved::parse(
            "*nat\n:OUTPUT ACCEPT [0:0]\n:PALISADE_OUTPUT - [0:0]\n:KUBE-X - [0:0]\n\
             -A OUTPUT -j KUBE-X\n-A OUTPUT -j PALISADE_OUTPUT\n-A PALISADE_OUTPUT -o lo -j RETURN\n\
             COMMIT\n*raw\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j CT --notrack\nCOMMIT\n",
        );
        assert_eq!(
            removal_input(&installed).unwrap(),
            "*nat\n-D OUTPUT -j PALISADE_OUTPUT\n-F PALISADE_OUTPUT\n-X PALISADE_OUTPUT\nCOMMIT\n"
        );
        assert_eq!(removal_input(&Saved::parse("*raw\nCOMMIT\n")), None);
    }

    #[test]
    fn several_jumps_into_one_chain_keep_their_order() {
        let desired = Saved::parse(
            "*filter\n:PALISADE_A - [0:0]\n:PALISADE_B - [0:0]\n-A INPUT -j PALISADE_A\n\
             -A INPUT -j PALISADE_B\nCOMMIT\n",
        );
        let input = install_input(&desired, &Saved::default());
        assert!(
            input.contains("-I INPUT 1 -j PALISADE_A\n-I INPUT 2 -j PALISADE_B\n"),
            "{input}"
        );
    }
}
