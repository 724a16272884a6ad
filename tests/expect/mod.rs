//! The upstream-style conformance cases of `tests/conformance/` and their reachability
//! matrices: reading them, and comparing what palisade gives with them. Shared by
//! tests/conformance.rs (verdicts computed offline) and tests/lab_conformance.rs (flows
//! probed through real kernels and proxies).
//!
//! Each case in `tests/conformance/cases/` is one upstream scenario: `NNN-slug.yaml` holds
//! its policies (and any Namespace or Pod that replaces a model object), `NNN-slug.expect`
//! the reachability upstream expects, translated to the fixed model of
//! `tests/conformance/model.yaml`. The expectations come from upstream, never from
//! palisade: when they disagree, palisade is wrong.
//!
//! An `.expect` file is a list of blocks. A block starts with the port/protocol pairs it
//! covers (`TCP/80 UDP/80`, or `*` for every pair no other block names), then a line of
//! column pods (destinations), then one row per source pod: `.` allowed, `X` denied, `-` the
//! destination does not serve that port. Lines starting with `#` are comments.
//!
//! Upstream runs each scenario on a single-stack cluster, so a matrix is about the pods'
//! primary addresses. On the model's dual-stack pods it holds for the other family too,
//! except in cases whose policies name addresses (`ipBlock`): those hold for the family of
//! the addresses named.

// Each test crate that includes this module uses a part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use palisade_policy::cluster::{Cluster, Family};
use palisade_policy::ports::Protocol;

pub fn conformance_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance")
}

pub fn cases_dir() -> PathBuf {
    conformance_dir().join("cases")
}

/// A protocol and port: what a block of an `.expect` file covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortPair {
    pub protocol: Protocol,
    pub port: u16,
}

impl PortPair {
    /// Parses `TCP/80` (the protocol in upper case, as the API spells it).
    pub fn parse(s: &str) -> Option<Self> {
        let (protocol, port) = s.split_once('/')?;
        if protocol != protocol.to_ascii_uppercase() {
            return None;
        }
        Some(Self {
            protocol: Protocol::parse(protocol)?,
            port: port.parse().ok()?,
        })
    }
}

impl fmt::Display for PortPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.protocol.as_str(), self.port)
    }
}

/// One cell of a reachability matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    Allowed,
    Denied,
    /// The destination does not serve this port, so nothing is probed.
    NotServed,
}

impl Cell {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "." => Some(Cell::Allowed),
            "X" => Some(Cell::Denied),
            "-" => Some(Cell::NotServed),
            _ => None,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Cell::Allowed => ".",
            Cell::Denied => "X",
            Cell::NotServed => "-",
        }
    }
}

/// Who reaches whom on one port: rows are sources, columns destinations, both in `pods` order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matrix {
    pub pods: Vec<String>,
    cells: Vec<Cell>,
}

impl Matrix {
    pub fn filled(pods: Vec<String>, cell: Cell) -> Self {
        let cells = vec![cell; pods.len() * pods.len()];
        Self { pods, cells }
    }

    pub fn get(&self, from: usize, to: usize) -> Cell {
        self.cells[from * self.pods.len() + to]
    }

    pub fn set(&mut self, from: usize, to: usize, cell: Cell) {
        let n = self.pods.len();
        self.cells[from * n + to] = cell;
    }

    /// The same matrix with rows and columns in the order of `pods` (the same set of pods).
    pub fn reordered(&self, pods: &[String]) -> Self {
        let index: HashMap<&str, usize> = self
            .pods
            .iter()
            .enumerate()
            .map(|(i, p)| (p.as_str(), i))
            .collect();
        let mut out = Matrix::filled(pods.to_vec(), Cell::NotServed);
        for (i, from) in pods.iter().enumerate() {
            for (j, to) in pods.iter().enumerate() {
                out.set(i, j, self.get(index[from.as_str()], index[to.as_str()]));
            }
        }
        out
    }

    pub fn differences(&self, other: &Matrix) -> usize {
        self.cells
            .iter()
            .zip(&other.cells)
            .filter(|(a, b)| a != b)
            .count()
    }

    /// The matrix as text; cells that differ from `against` are shown as `[X]`.
    pub fn render(&self, against: Option<&Matrix>) -> Vec<String> {
        let label = self.pods.iter().map(String::len).max().unwrap_or(0);
        let widths: Vec<usize> = self.pods.iter().map(|p| p.len().max(3)).collect();
        let mut lines = Vec::with_capacity(self.pods.len() + 1);
        let mut header = " ".repeat(label);
        for (pod, w) in self.pods.iter().zip(&widths) {
            header.push_str(&format!(" {pod:^w$}"));
        }
        lines.push(header);
        for (i, from) in self.pods.iter().enumerate() {
            let mut row = format!("{from:<label$}");
            for (j, w) in widths.iter().enumerate() {
                let cell = self.get(i, j);
                let text = match against {
                    Some(other) if other.get(i, j) != cell => format!("[{}]", cell.symbol()),
                    _ => cell.symbol().to_owned(),
                };
                row.push_str(&format!(" {text:^w$}"));
            }
            lines.push(row.trim_end().to_owned());
        }
        lines
    }
}

/// One block of an `.expect` file.
#[derive(Debug)]
pub struct Block {
    /// The line of its header, for messages.
    line: usize,
    /// The pairs it covers; `None` for `*`.
    pairs: Option<Vec<PortPair>>,
    matrix: Matrix,
}

impl Block {
    pub fn title(&self) -> String {
        match &self.pairs {
            None => "*".to_owned(),
            Some(pairs) => pairs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

/// A block being read: header line, pairs, column pods, rows.
type OpenBlock = (
    usize,
    Option<Vec<PortPair>>,
    Vec<String>,
    Vec<(String, Vec<Cell>)>,
);

/// Reads an `.expect` file; an error names the line at fault.
pub fn parse_expect(text: &str) -> Result<Vec<Block>, String> {
    fn header(tokens: &[&str]) -> Option<Option<Vec<PortPair>>> {
        if tokens == ["*"] {
            return Some(None);
        }
        tokens
            .iter()
            .map(|t| PortPair::parse(t))
            .collect::<Option<Vec<_>>>()
            .map(Some)
    }
    fn close(open: OpenBlock) -> Result<Block, String> {
        let (line, pairs, columns, rows) = open;
        if columns.is_empty() {
            return Err(format!("line {line}: the block has no column line"));
        }
        let row_pods: Vec<&String> = rows.iter().map(|(p, _)| p).collect();
        if row_pods != columns.iter().collect::<Vec<_>>() {
            return Err(format!(
                "line {line}: the rows ({}) must list the same pods in the same order as the columns ({})",
                row_pods.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" "),
                columns.join(" ")
            ));
        }
        Ok(Block {
            line,
            pairs,
            matrix: Matrix {
                pods: columns,
                cells: rows.into_iter().flat_map(|(_, cells)| cells).collect(),
            },
        })
    }

    let mut blocks = Vec::new();
    let mut open: Option<OpenBlock> = None;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let tokens: Vec<&str> = line.split_whitespace().collect();
        if let Some(pairs) = header(&tokens) {
            if let Some(b) = open.take() {
                blocks.push(close(b)?);
            }
            open = Some((n, pairs, Vec::new(), Vec::new()));
            continue;
        }
        let Some((_, _, columns, rows)) = open.as_mut() else {
            return Err(format!(
                "line {n}: expected a block header (port/protocol pairs such as `TCP/80 UDP/80`, or `*`), found {line:?}"
            ));
        };
        if columns.is_empty() {
            if let Some(bad) = tokens.iter().find(|t| !t.contains('/')) {
                return Err(format!(
                    "line {n}: {bad:?} is not a pod (write namespace/name)"
                ));
            }
            *columns = tokens.iter().map(|t| (*t).to_owned()).collect();
            continue;
        }
        let cells = tokens[1..]
            .iter()
            .map(|t| {
                Cell::parse(t)
                    .ok_or_else(|| format!("line {n}: {t:?} is not a cell: use `.`, `X` or `-`"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if cells.len() != columns.len() {
            return Err(format!(
                "line {n}: row {} has {} cells for {} columns",
                tokens[0],
                cells.len(),
                columns.len()
            ));
        }
        rows.push((tokens[0].to_owned(), cells));
    }
    if let Some(b) = open.take() {
        blocks.push(close(b)?);
    }
    if blocks.is_empty() {
        return Err("the file has no block".to_owned());
    }
    let mut seen = BTreeSet::new();
    for b in &blocks {
        let keys: Vec<String> = match &b.pairs {
            None => vec!["*".to_owned()],
            Some(pairs) => pairs.iter().map(ToString::to_string).collect(),
        };
        for key in keys {
            if !seen.insert(key.clone()) {
                return Err(format!(
                    "line {}: {key} is covered by an earlier block already",
                    b.line
                ));
            }
        }
    }
    Ok(blocks)
}

/// Pairs whose observed matrix differs from the expected one, grouped by block and outcome.
pub struct Mismatch {
    pairs: Vec<PortPair>,
    /// The expecting block's header line and title.
    block_line: usize,
    block_title: String,
    expected: Matrix,
    observed: Matrix,
}

/// A case's files and what they say.
pub struct Case {
    /// `NNN-slug`.
    pub name: String,
    /// Its policies and model overrides.
    pub yaml_path: PathBuf,
    /// Its reachability matrices.
    pub expect_path: PathBuf,
}

impl Case {
    /// The case named `NNN-slug`.
    pub fn named(name: &str) -> Case {
        Case {
            yaml_path: cases_dir().join(format!("{name}.yaml")),
            expect_path: cases_dir().join(format!("{name}.expect")),
            name: name.to_owned(),
        }
    }

    /// The upstream test's description, from the first line of the YAML.
    pub fn upstream(&self) -> String {
        let text = fs::read_to_string(&self.yaml_path).unwrap_or_default();
        text.lines()
            .next()
            .and_then(|l| l.strip_prefix("# upstream: "))
            .unwrap_or("(no `# upstream:` line)")
            .to_owned()
    }

    /// The families of the addresses its policies name (`ipBlock` CIDRs); empty when
    /// they name none.
    pub fn named_families(&self) -> BTreeSet<Family> {
        let text = fs::read_to_string(&self.yaml_path).unwrap_or_default();
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("cidr:"))
            .filter_map(|cidr| {
                cidr.trim()
                    .trim_matches('"')
                    .split('/')
                    .next()?
                    .parse()
                    .ok()
            })
            .map(Family::of)
            .collect()
    }
}

/// Every case, by name.
pub fn cases() -> Vec<Case> {
    let mut names: Vec<String> = fs::read_dir(cases_dir())
        .expect("tests/conformance/cases is readable")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".yaml")
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    names.iter().map(|n| Case::named(n)).collect()
}

/// The family of a cluster's primary addresses (its first pod on a network of its own):
/// the one upstream's single-stack expectations are about.
pub fn primary_family(cluster: &Cluster) -> Option<Family> {
    let pod = cluster.pods.iter().find(|p| !p.host_network)?;
    pod.ips.first().map(|ip| Family::of(*ip))
}

/// The families a case's matrices hold for on `cluster`. A case that names no address
/// holds for every family. One that does (`ipBlock`) holds for the cluster's primary
/// family when its addresses are of that family, and for no family otherwise (an IPv4
/// block on an IPv6-only copy of the case): then only `simulate` tells what to expect.
pub fn families(case: &Case, cluster: &Cluster) -> Vec<Family> {
    let Some(primary) = primary_family(cluster) else {
        return Vec::new();
    };
    let named = case.named_families();
    if named.is_empty() {
        let mut families = vec![primary];
        families.extend(Family::ALL.into_iter().filter(|f| *f != primary));
        families
    } else if named.contains(&primary) {
        vec![primary]
    } else {
        Vec::new()
    }
}

/// A case's `.expect` file, its matrices in the order of a cluster's pods.
pub struct Expectation {
    blocks: Vec<Block>,
    /// Each block's matrix, rows and columns in the cluster's pod order.
    expected: Vec<Matrix>,
    pods: Vec<String>,
}

impl Expectation {
    /// Reads a case's `.expect` for a cluster whose pods are `pods`; every block must list
    /// each of them once.
    pub fn read(case: &Case, pods: &[String]) -> Result<Expectation, String> {
        let text = fs::read_to_string(&case.expect_path)
            .map_err(|e| format!("cannot read {}: {e}", case.expect_path.display()))?;
        let blocks =
            parse_expect(&text).map_err(|e| format!("{}: {e}", case.expect_path.display()))?;
        let pod_set: BTreeSet<&String> = pods.iter().collect();
        let mut expected = Vec::with_capacity(blocks.len());
        for b in &blocks {
            let listed: BTreeSet<&String> = b.matrix.pods.iter().collect();
            if listed != pod_set || listed.len() != b.matrix.pods.len() {
                let missing: Vec<&str> = pod_set.difference(&listed).map(|s| s.as_str()).collect();
                let unknown: Vec<&str> = listed.difference(&pod_set).map(|s| s.as_str()).collect();
                return Err(format!(
                    "{}:{}: the block must list each pod of the cluster once; missing [{}], not in the cluster [{}]",
                    case.expect_path.display(),
                    b.line,
                    missing.join(" "),
                    unknown.join(" ")
                ));
            }
            expected.push(b.matrix.reordered(pods));
        }
        Ok(Expectation {
            blocks,
            expected,
            pods: pods.to_vec(),
        })
    }

    /// The pairs blocks name explicitly.
    pub fn named_pairs(&self) -> BTreeSet<PortPair> {
        self.blocks
            .iter()
            .flat_map(|b| b.pairs.iter().flatten().copied())
            .collect()
    }

    /// Compares the `observed` matrices of `pairs` (a pair observed nowhere: nothing
    /// served) with the expected ones. A cell for which `comparable(from, to)` (indices in
    /// the pod order) is false is not compared.
    pub fn compare(
        &self,
        pairs: &BTreeSet<PortPair>,
        observed: &BTreeMap<PortPair, Matrix>,
        comparable: impl Fn(usize, usize) -> bool,
    ) -> Result<Vec<Mismatch>, String> {
        let star = self.blocks.iter().position(|b| b.pairs.is_none());
        let n = self.pods.len();
        let mut mismatches: Vec<Mismatch> = Vec::new();
        for &pair in pairs {
            let block = self
                .blocks
                .iter()
                .position(|b| b.pairs.as_ref().is_some_and(|p| p.contains(&pair)))
                .or(star)
                .ok_or_else(|| {
                    format!("no block covers {pair}: name it in a block, or add a `*` block")
                })?;
            let expected = &self.expected[block];
            let mut seen = observed
                .get(&pair)
                .cloned()
                .unwrap_or_else(|| Matrix::filled(self.pods.clone(), Cell::NotServed));
            for i in 0..n {
                for j in 0..n {
                    if !comparable(i, j) {
                        seen.set(i, j, expected.get(i, j));
                    }
                }
            }
            if seen == *expected {
                continue;
            }
            let line = self.blocks[block].line;
            match mismatches
                .iter_mut()
                .find(|m| m.block_line == line && m.observed == seen)
            {
                Some(m) => m.pairs.push(pair),
                None => mismatches.push(Mismatch {
                    pairs: vec![pair],
                    block_line: line,
                    block_title: self.blocks[block].title(),
                    expected: expected.clone(),
                    observed: seen,
                }),
            }
        }
        Ok(mismatches)
    }
}

/// What a failing case prints: each mismatch with its block, and the expected and observed
/// matrices side by side; `what` says what was observed (`simulate`, `the kernel over
/// IPv6`, ...).
pub fn report(case: &Case, what: &str, mismatches: &[Mismatch]) -> String {
    let mut out = format!(
        "\n=== {} ({what}): upstream {}\n",
        case.name,
        case.upstream()
    );
    for m in mismatches {
        let pairs: Vec<String> = m.pairs.iter().map(ToString::to_string).collect();
        out.push_str(&format!(
            "  {}: {} differ, marked [ ] (expected: block `{}` at {}:{})\n",
            pairs.join(" "),
            match m.expected.differences(&m.observed) {
                1 => "1 cell".to_owned(),
                n => format!("{n} cells"),
            },
            m.block_title,
            case.expect_path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy(),
            m.block_line
        ));
        out.push_str(&side_by_side(m));
    }
    out
}

/// Expected and observed side by side, differing cells marked in the observed one.
fn side_by_side(m: &Mismatch) -> String {
    let left = m.expected.render(None);
    let right = m.observed.render(Some(&m.expected));
    let width = left
        .iter()
        .map(String::len)
        .max()
        .unwrap_or(0)
        .max("expected".len())
        + 4;
    let mut out = format!("    {:<width$}{}\n", "expected", "observed");
    for (l, r) in left.iter().zip(&right) {
        out.push_str(&format!("    {l:<width$}{r}\n"));
    }
    out
}
