//! The difference between the rules installed and the rules intended: what `--verify`
//! reports, as a diff a person can read.

use std::fmt;

use crate::config::Family;

/// One line of a diff.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiffLine {
    /// In both.
    Same(String),
    /// Intended but not installed.
    Missing(String),
    /// Installed but not intended.
    Unexpected(String),
}

/// A line diff of two texts (longest common subsequence; our rule sets are short).
pub fn diff(expected: &str, actual: &str) -> Vec<DiffLine> {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    // lcs[i][j]: length of the longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push(DiffLine::Same(a[i].to_string()));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push(DiffLine::Missing(a[i].to_string()));
            i += 1;
        } else {
            out.push(DiffLine::Unexpected(b[j].to_string()));
            j += 1;
        }
    }
    out
}

/// The differing rules of one family.
#[derive(Clone, Debug)]
pub struct RuleDrift {
    /// The family.
    pub family: Family,
    /// Which tool was read, like `iptables-nft-save`.
    pub tool: String,
    /// The whole diff, unchanged lines included.
    pub lines: Vec<DiffLine>,
}

/// Everything that differs; empty when the installed rules are the intended ones.
#[derive(Clone, Debug, Default)]
pub struct Drift {
    /// Rule sets that differ.
    pub rules: Vec<RuleDrift>,
    /// Problems with the policy routes, in sentences.
    pub routes: Vec<String>,
}

impl Drift {
    /// Whether nothing differs.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.routes.is_empty()
    }
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for drift in &self.rules {
            writeln!(
                f,
                "{} rules differ from what palisade init installs (`-` intended but missing, \
                 `+` installed but not intended; read with {}):",
                drift.family, drift.tool
            )?;
            // Show each change under the table it is in.
            let mut table = None;
            let mut shown_table = None;
            for line in &drift.lines {
                let (mark, text) = match line {
                    DiffLine::Same(t) => (None, t),
                    DiffLine::Missing(t) => (Some('-'), t),
                    DiffLine::Unexpected(t) => (Some('+'), t),
                };
                if text.starts_with('*') {
                    table = Some(text.clone());
                }
                if let Some(mark) = mark {
                    if shown_table != table && !text.starts_with('*') {
                        if let Some(t) = &table {
                            writeln!(f, "   {t}")?;
                        }
                        shown_table = table.clone();
                    }
                    writeln!(f, " {mark} {text}")?;
                }
            }
        }
        for problem in &self.routes {
            writeln!(f, "{problem}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_marks_missing_and_unexpected_lines() {
        let expected = "*nat\n-A X a\n-A X b\nCOMMIT\n";
        let actual = "*nat\n-A X a\n-A X c\nCOMMIT\n";
        assert_eq!(
            diff(expected, actual),
            [
                DiffLine::Same("*nat".into()),
                DiffLine::Same("-A X a".into()),
                DiffLine::Missing("-A X b".into()),
                DiffLine::Unexpected("-A X c".into()),
                DiffLine::Same("COMMIT".into()),
            ]
        );
    }

    #[test]
    fn drift_is_shown_under_its_table() {
        let drift = Drift {
            rules: vec![RuleDrift {
                family: Family::V4,
                tool: "iptables-nft-save".into(),
                lines: diff(
                    "*nat\n-A X a\nCOMMIT\n*mangle\n-A Y b\nCOMMIT\n",
                    "*nat\n-A X a\nCOMMIT\n*mangle\nCOMMIT\n",
                ),
            }],
            routes: vec!["IPv4: the route `local 0.0.0.0/0 dev lo table 2190` is missing".into()],
        };
        let text = drift.to_string();
        assert!(text.contains("   *mangle\n - -A Y b\n"), "{text}");
        assert!(!text.contains("*nat"), "{text}");
        assert!(text.contains("route `local 0.0.0.0/0"), "{text}");
    }
}
