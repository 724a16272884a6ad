//! Reachability matrices in the style of the upstream e2e tables: one per port and
//! protocol, rows are sources, columns the pods that declare the port.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use palisade_policy::cluster::Cluster;
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
}

/// The legend printed above the tables.
pub const LEGEND: &str =
    ". allowed   X denied   A denied, but let through by audit mode   - same pod";

/// One table's cells by (from, to).
type Table<'a> = BTreeMap<(&'a str, &'a str), Cell>;

/// Renders one table per port and protocol of `cells` (keyed by flow).
pub fn render(cluster: &Cluster, cells: &[(&SimFlow, Cell)]) -> String {
    let mut tables: BTreeMap<(&str, u16), Table> = BTreeMap::new();
    for (f, cell) in cells {
        tables
            .entry((f.protocol.as_str(), f.port))
            .or_default()
            .insert((f.from.as_str(), f.to.as_str()), *cell);
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
                let mark = if from == to {
                    "-"
                } else {
                    cells
                        .get(&(from.as_str(), to.as_str()))
                        .map_or(" ", |c| c.text())
                };
                let _ = write!(out, "  {mark:^w$}", w = to.len());
            }
            out.push('\n');
        }
    }
    out
}
