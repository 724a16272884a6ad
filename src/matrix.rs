//! Reachability matrices in the style of the upstream e2e tables: one per port and
//! protocol, rows are sources, columns the pods that declare the port. Between dual-stack
//! pods a cell stands for both families: `.` or `X` when they agree, `4` or `6` when only
//! that family's addresses are allowed.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use palisade_policy::cluster::{Cluster, Family};
use palisade_policy::simulate::SimFlow;

/// How commands that judge many flows print them.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum Output {
    /// Tables for people.
    #[default]
    Table,
    /// JSON for scripts (each command documents its shape in README.md).
    Json,
}

/// What one cell shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    /// `.`: allowed.
    Allowed,
    /// `X`: denied.
    Denied,
    /// `A`: denied by policy, let through by audit mode.
    Audit,
    /// `?`: not probed (SCTP in the lab).
    NotProbed,
    /// `[.]` or `[X]`: observed otherwise than expected; holds what was observed.
    Differs(bool),
    /// `[+]`: opened by a change (denied before, passes now).
    Opened,
    /// `[-]`: closed by a change (passed before, denied now).
    Closed,
    /// `[~]`: passes before and after, but audit mode's part changed.
    AuditChanged,
}

impl Cell {
    /// The cell of a simulated flow.
    pub fn of(flow: &SimFlow) -> Cell {
        match (flow.allowed, flow.would_deny()) {
            (false, _) => Cell::Denied,
            (true, true) => Cell::Audit,
            (true, false) => Cell::Allowed,
        }
    }

    /// The mark the cell shows.
    pub fn text(self) -> &'static str {
        match self {
            Cell::Allowed => ".",
            Cell::Denied => "X",
            Cell::Audit => "A",
            Cell::NotProbed => "?",
            Cell::Differs(true) => "[.]",
            Cell::Differs(false) => "[X]",
            Cell::Opened => "[+]",
            Cell::Closed => "[-]",
            Cell::AuditChanged => "[~]",
        }
    }

    /// Whether the flow gets through: as observed where that differs from expected.
    fn passes(self) -> Option<bool> {
        match self {
            Cell::Allowed | Cell::Audit | Cell::Opened | Cell::AuditChanged => Some(true),
            Cell::Denied | Cell::Closed => Some(false),
            Cell::NotProbed => None,
            Cell::Differs(seen) => Some(seen),
        }
    }
}

/// What one cell shows for the flows of every family between two pods: the cell they all
/// share, or the family whose flow alone gets through (`4`, `6`; in brackets when that is
/// observed, differing from expected).
fn merged(cells: &[(Family, Cell)]) -> String {
    if let Some((_, first)) = cells.first() {
        if cells.iter().all(|(_, c)| c == first) {
            return first.text().to_owned();
        }
    }
    let passing: Vec<Family> = cells
        .iter()
        .filter(|(_, c)| c.passes() == Some(true))
        .map(|(f, _)| *f)
        .collect();
    let summary = match passing.as_slice() {
        [] => "X",
        [Family::V4] => "4",
        [Family::V6] => "6",
        _ => ".",
    };
    if cells.iter().any(|(_, c)| matches!(c, Cell::Differs(_))) {
        format!("[{summary}]")
    } else {
        summary.to_owned()
    }
}

/// The legend printed above the tables.
pub const LEGEND: &str = ". allowed   X denied   A denied, but let through by audit mode   \
                          4 6 allowed over IPv4 or IPv6 only   - same pod";

/// One table's cells by (from, to), each family's.
type Table<'a> = BTreeMap<(&'a str, &'a str), Vec<(Family, Cell)>>;

/// Renders one table per port and protocol of `cells` (keyed by flow).
pub fn render(cluster: &Cluster, cells: &[(&SimFlow, Cell)]) -> String {
    let mut tables: BTreeMap<(&str, u16), Table> = BTreeMap::new();
    for (f, cell) in cells {
        tables
            .entry((f.protocol.as_str(), f.port))
            .or_default()
            .entry((f.from.as_str(), f.to.as_str()))
            .or_default()
            .push((f.family, *cell));
    }
    let pods: Vec<String> = cluster.pods.iter().map(|p| p.key()).collect();
    let width = pods.iter().map(String::len).max().unwrap_or(0);
    let mut out = String::new();
    for ((protocol, port), cells) in &tables {
        let columns: Vec<String> = cluster
            .pods
            .iter()
            .filter(|p| {
                p.ports
                    .iter()
                    .any(|c| c.port == *port && c.protocol.as_str() == *protocol)
            })
            .map(|p| p.key())
            .collect();
        let _ = writeln!(out, "\n{protocol}/{port}");
        let _ = write!(out, "{:width$}", "");
        for c in &columns {
            let _ = write!(out, "  {c}");
        }
        out.push('\n');
        for from in &pods {
            let _ = write!(out, "{from:width$}");
            for to in &columns {
                // A pod's flows to itself show only where they were given (the lab probes
                // them; simulate leaves them out).
                let mark = match cells.get(&(from.as_str(), to.as_str())) {
                    Some(family_cells) => merged(family_cells),
                    None if from == to => "-".to_owned(),
                    None => " ".to_owned(),
                };
                let _ = write!(out, "  {mark:^w$}", w = to.len());
            }
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_that_agree_show_one_mark_and_those_that_differ_name_the_one_allowed() {
        let v4 = |c| (Family::V4, c);
        let v6 = |c| (Family::V6, c);
        assert_eq!(merged(&[v4(Cell::Allowed), v6(Cell::Allowed)]), ".");
        assert_eq!(merged(&[v4(Cell::Denied)]), "X");
        assert_eq!(merged(&[v4(Cell::Allowed), v6(Cell::Denied)]), "4");
        assert_eq!(merged(&[v4(Cell::Denied), v6(Cell::Audit)]), "6");
        // Observed otherwise than expected: in brackets, what was observed.
        assert_eq!(
            merged(&[v4(Cell::Allowed), v6(Cell::Differs(false))]),
            "[4]"
        );
        assert_eq!(merged(&[v4(Cell::Differs(true)), v6(Cell::Allowed)]), "[.]");
        assert_eq!(
            merged(&[v4(Cell::Differs(false)), v6(Cell::Differs(false))]),
            "[X]"
        );
    }
}
