//! iptables-save output: parsed into tables, chains and rules, with our share picked out.
//!
//! The same shape holds the rules we intend ([`crate::rules::build`]), so that verifying
//! is comparing two renderings of it.

use std::fmt::Write as _;

/// Every chain of ours starts with this.
pub const CHAIN_PREFIX: &str = "PALISADE_";

/// The tables in the order we write and render them.
pub const TABLE_ORDER: [&str; 3] = ["nat", "mangle", "filter"];

/// The built-in chains, in the order iptables-save prints their rules.
pub const BUILTIN_ORDER: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

/// Whether `chain` is one of ours.
pub fn is_ours(chain: &str) -> bool {
    chain.starts_with(CHAIN_PREFIX)
}

/// One rule: its chain and the rest of its `-A CHAIN ...` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The chain the rule is in.
    pub chain: String,
    /// Matches and target, exactly as iptables-save prints them.
    pub spec: String,
}

impl Rule {
    /// A rule of `chain`.
    pub fn new(chain: &str, spec: impl Into<String>) -> Rule {
        Rule {
            chain: chain.to_string(),
            spec: spec.into(),
        }
    }

    /// The chain this rule jumps (`-j`) or goes (`-g`) to, when that is one of ours.
    pub fn target_of_ours(&self) -> Option<&str> {
        let mut words = self.spec.split_whitespace();
        while let Some(word) = words.next() {
            if word == "-j" || word == "-g" {
                return words.next().filter(|t| is_ours(t));
            }
        }
        None
    }

    /// A rule in someone else's chain (a built-in one) that leads into ours.
    pub fn is_jump_into_ours(&self) -> bool {
        !is_ours(&self.chain) && self.target_of_ours().is_some()
    }
}

/// One table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    /// `nat`, `mangle`, `filter`...
    pub name: String,
    /// The chains it declares, built-in ones included.
    pub chains: Vec<String>,
    /// Its rules, in the order iptables-save printed them.
    pub rules: Vec<Rule>,
}

impl Table {
    /// An empty table called `name`.
    pub fn new(name: &str) -> Table {
        Table {
            name: name.to_string(),
            ..Table::default()
        }
    }

    /// The declared chains that are ours.
    pub fn our_chains(&self) -> impl Iterator<Item = &str> {
        self.chains
            .iter()
            .map(String::as_str)
            .filter(|c| is_ours(c))
    }

    /// The rules of `chain`, in order.
    pub fn rules_of<'a>(&'a self, chain: &'a str) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules.iter().filter(move |r| r.chain == chain)
    }
}

/// A whole iptables-save output of one family, or the rules we intend for one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Saved {
    /// The tables, in the order they were printed (or built).
    pub tables: Vec<Table>,
}

impl Saved {
    /// Parses iptables-save output (comments, `*table`, `:chain`, `-A` lines, `COMMIT`).
    pub fn parse(text: &str) -> Saved {
        let mut saved = Saved::default();
        for line in text.lines() {
            let line = line.trim();
            if let Some(name) = line.strip_prefix('*') {
                saved.tables.push(Table::new(name.trim()));
            } else if let Some(decl) = line.strip_prefix(':') {
                if let (Some(table), Some(chain)) =
                    (saved.tables.last_mut(), decl.split_whitespace().next())
                {
                    table.chains.push(chain.to_string());
                }
            } else if let Some(rest) = line.strip_prefix("-A ") {
                if let Some(table) = saved.tables.last_mut() {
                    let (chain, spec) = rest.split_once(' ').unwrap_or((rest, ""));
                    table.rules.push(Rule::new(chain, spec.trim()));
                }
            }
        }
        saved
    }

    /// The table called `name`, if present.
    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// How many rules there are in all tables: what backend detection counts.
    pub fn rule_count(&self) -> usize {
        self.tables.iter().map(|t| t.rules.len()).sum()
    }

    /// Only what is ours: our chains and their rules, and the rules elsewhere that lead
    /// into them. Tables without any of it are left out.
    pub fn ours(&self) -> Saved {
        let tables = self
            .tables
            .iter()
            .map(|t| Table {
                name: t.name.clone(),
                chains: t.our_chains().map(str::to_string).collect(),
                rules: t
                    .rules
                    .iter()
                    .filter(|r| is_ours(&r.chain) || r.is_jump_into_ours())
                    .cloned()
                    .collect(),
            })
            .filter(|t| !t.chains.is_empty() || !t.rules.is_empty())
            .collect();
        Saved { tables }
    }

    /// Whether nothing of ours is here.
    pub fn has_nothing_of_ours(&self) -> bool {
        self.ours().tables.is_empty()
    }

    /// The canonical text of our share, as iptables-save prints it but in a fixed order:
    /// tables nat, mangle, filter (then any other, by name); in each, the declarations of
    /// our chains by name, the jumps into them by built-in chain, then the rules of our
    /// chains by chain name. Comparing two renderings is how `--verify` works.
    pub fn render(&self) -> String {
        let ours = self.ours();
        let mut tables: Vec<&Table> = ours.tables.iter().collect();
        tables.sort_by_key(|t| (table_rank(&t.name), t.name.clone()));
        let mut out = String::new();
        for table in tables {
            let _ = writeln!(out, "*{}", table.name);
            let mut chains: Vec<&str> = table.our_chains().collect();
            chains.sort_unstable();
            chains.dedup();
            for chain in &chains {
                let _ = writeln!(out, ":{chain} - [0:0]");
            }
            let mut jumps: Vec<&Rule> = table.rules.iter().filter(|r| !is_ours(&r.chain)).collect();
            // A stable sort keeps the order of rules within one chain.
            jumps.sort_by_key(|r| (builtin_rank(&r.chain), r.chain.clone()));
            for rule in jumps {
                let _ = writeln!(out, "-A {} {}", rule.chain, rule.spec);
            }
            let mut rule_chains: Vec<&str> = table
                .rules
                .iter()
                .map(|r| r.chain.as_str())
                .filter(|c| is_ours(c))
                .collect();
            rule_chains.sort_unstable();
            rule_chains.dedup();
            for chain in rule_chains {
                for rule in table.rules_of(chain) {
                    let _ = writeln!(out, "-A {} {}", rule.chain, rule.spec);
                }
            }
            out.push_str("COMMIT\n");
        }
        out
    }
}

/// Where a table goes in [`TABLE_ORDER`]; others after.
pub fn table_rank(name: &str) -> usize {
    TABLE_ORDER
        .iter()
        .position(|t| *t == name)
        .unwrap_or(TABLE_ORDER.len())
}

/// Where a built-in chain goes in [`BUILTIN_ORDER`]; other chains after.
pub fn builtin_rank(chain: &str) -> usize {
    BUILTIN_ORDER
        .iter()
        .position(|c| *c == chain)
        .unwrap_or(BUILTIN_ORDER.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVED: &str = "\
# Generated by iptables-save v1.8.9 on Sat Nov 21 05:56:56 2026
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:PALISADE_FILTER - [0:0]
:KUBE-FOO - [0:0]
-A INPUT -s 1.2.3.4/32 -j ACCEPT
-A INPUT -j PALISADE_FILTER
-A OUTPUT -j PALISADE_FILTER
-A KUBE-FOO -j RETURN
-A PALISADE_FILTER -p sctp -j DROP
COMMIT
# Completed on Sat Nov 21 05:56:56 2026
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A OUTPUT -j KUBE-FOO
COMMIT
";

    #[test]
    fn parses_tables_chains_and_rules() {
        let saved = Saved::parse(SAVED);
        assert_eq!(saved.tables.len(), 2);
        assert_eq!(saved.rule_count(), 6);
        let filter = saved.table("filter").unwrap();
        assert_eq!(filter.our_chains().collect::<Vec<_>>(), ["PALISADE_FILTER"]);
        assert_eq!(
            filter.rules[0],
            Rule::new("INPUT", "-s 1.2.3.4/32 -j ACCEPT")
        );
    }

    #[test]
    fn ours_keeps_only_our_chains_and_jumps_into_them() {
        let saved = Saved::parse(SAVED);
        assert_eq!(
            saved.render(),
            "*filter\n:PALISADE_FILTER - [0:0]\n-A INPUT -j PALISADE_FILTER\n\
             -A OUTPUT -j PALISADE_FILTER\n-A PALISADE_FILTER -p sctp -j DROP\nCOMMIT\n"
        );
        assert!(Saved::parse("*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n").has_nothing_of_ours());
    }
}
