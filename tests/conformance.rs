//! Conformance with the upstream Kubernetes network-policy e2e suite (kubernetes/kubernetes,
//! test/e2e/network/netpol/network_policy.go).
//!
//! Each case in `tests/conformance/cases/` is one upstream scenario: `NNN-slug.yaml` holds its
//! policies (and any Namespace or Pod that replaces a model object), `NNN-slug.expect` the
//! reachability upstream expects, translated to the fixed model of `tests/conformance/model.yaml`.
//! The expectations come from upstream, never from palisade: when they disagree, palisade is
//! wrong. A failing case prints the expected and observed matrices side by side.
//!
//! An `.expect` file is a list of blocks. A block starts with the port/protocol pairs it covers
//! (`TCP/80 UDP/80`, or `*` for every pair no other block names), then a line of column pods
//! (destinations), then one row per source pod: `.` allowed, `X` denied, `-` the destination
//! does not serve that port. Lines starting with `#` are comments.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use palisade_policy::cluster::Cluster;
use palisade_policy::compile::Compiler;
use palisade_policy::compiled::Flow;
use palisade_policy::manifest::{load_str, Report};
use palisade_policy::policy::Direction;
use palisade_policy::ports::Protocol;
use palisade_policy::simulate::simulate;
use palisade_policy::verdict::decide;

/// The suite re-expresses at least this many upstream scenarios.
const MIN_CASES: usize = 45;

fn conformance_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance")
}

fn cases_dir() -> PathBuf {
    conformance_dir().join("cases")
}

/// A protocol and port: what a block of an `.expect` file covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct PortPair {
    protocol: Protocol,
    port: u16,
}

impl PortPair {
    /// Parses `TCP/80` (the protocol in upper case, as the API spells it).
    fn parse(s: &str) -> Option<Self> {
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
enum Cell {
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
struct Matrix {
    pods: Vec<String>,
    cells: Vec<Cell>,
}

impl Matrix {
    fn filled(pods: Vec<String>, cell: Cell) -> Self {
        let cells = vec![cell; pods.len() * pods.len()];
        Self { pods, cells }
    }

    fn get(&self, from: usize, to: usize) -> Cell {
        self.cells[from * self.pods.len() + to]
    }

    fn set(&mut self, from: usize, to: usize, cell: Cell) {
        let n = self.pods.len();
        self.cells[from * n + to] = cell;
    }

    /// The same matrix with rows and columns in the order of `pods` (the same set of pods).
    fn reordered(&self, pods: &[String]) -> Self {
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

    fn differences(&self, other: &Matrix) -> usize {
        self.cells
            .iter()
            .zip(&other.cells)
            .filter(|(a, b)| a != b)
            .count()
    }

    /// The matrix as text; cells that differ from `against` are shown as `[X]`.
    fn render(&self, against: Option<&Matrix>) -> Vec<String> {
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
struct Block {
    /// The line of its header, for messages.
    line: usize,
    /// The pairs it covers; `None` for `*`.
    pairs: Option<Vec<PortPair>>,
    matrix: Matrix,
}

impl Block {
    fn title(&self) -> String {
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
fn parse_expect(text: &str) -> Result<Vec<Block>, String> {
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

/// The matrices palisade gives for a cluster, one per port/protocol some pod serves.
fn observe(cluster: &Cluster) -> BTreeMap<PortPair, Matrix> {
    let pods: Vec<String> = cluster.pods.iter().map(|p| p.key()).collect();
    let index: HashMap<&str, usize> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| (p.as_str(), i))
        .collect();
    let mut matrices: BTreeMap<PortPair, Matrix> = cluster
        .pods
        .iter()
        .flat_map(|p| &p.ports)
        .map(|c| {
            let pair = PortPair {
                protocol: c.protocol,
                port: c.port,
            };
            (pair, Matrix::filled(pods.clone(), Cell::NotServed))
        })
        .collect();
    let verdict = |allowed: bool| if allowed { Cell::Allowed } else { Cell::Denied };
    for flow in simulate(cluster).flows {
        let pair = PortPair {
            protocol: flow.protocol,
            port: flow.port,
        };
        let m = matrices
            .entry(pair)
            .or_insert_with(|| Matrix::filled(pods.clone(), Cell::NotServed));
        m.set(
            index[flow.from.as_str()],
            index[flow.to.as_str()],
            verdict(flow.allowed),
        );
    }
    // `simulate` leaves out a pod's connections to itself (upstream's loopback, which a pod
    // can never block): judge them with the pod's own compiled policy, both sides.
    let compiler = Compiler::new(cluster);
    for (i, pod) in cluster.pods.iter().enumerate() {
        let Some(&own) = pod.ips.first() else {
            continue;
        };
        let policy = compiler.compile(pod);
        for c in &pod.ports {
            let passes = [Direction::Egress, Direction::Ingress]
                .into_iter()
                .all(|direction| {
                    let flow = Flow {
                        direction,
                        peer: own,
                        port: c.port,
                        protocol: c.protocol,
                        names: &[],
                    };
                    decide(&policy, &flow).action.passes()
                });
            let pair = PortPair {
                protocol: c.protocol,
                port: c.port,
            };
            if let Some(m) = matrices.get_mut(&pair) {
                m.set(i, i, verdict(passes));
            }
        }
    }
    matrices
}

/// Pairs whose observed matrix differs from the expected one, grouped by block and outcome.
struct Mismatch {
    pairs: Vec<PortPair>,
    /// The expecting block's header line and title.
    block_line: usize,
    block_title: String,
    expected: Matrix,
    observed: Matrix,
}

/// A case's files and what they say.
struct Case {
    name: String,
    yaml_path: PathBuf,
    expect_path: PathBuf,
}

impl Case {
    fn upstream(&self) -> String {
        let text = fs::read_to_string(&self.yaml_path).unwrap_or_default();
        text.lines()
            .next()
            .and_then(|l| l.strip_prefix("# upstream: "))
            .unwrap_or("(no `# upstream:` line)")
            .to_owned()
    }
}

fn load(cluster: &mut Cluster, path: &Path) -> Result<(), String> {
    let text =
        fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let file = path.file_name().map_or_else(
        || path.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    );
    let mut report = Report::default();
    load_str(cluster, &file, &text, &mut report);
    if report.errors.is_empty() {
        Ok(())
    } else {
        let errors: Vec<String> = report.errors.iter().map(|e| format!("    {e}")).collect();
        Err(format!("the manifests do not load:\n{}", errors.join("\n")))
    }
}

/// Checks one case: `Ok` with its mismatches, or `Err` when it cannot be checked at all.
fn check(case: &Case) -> Result<Vec<Mismatch>, String> {
    let mut cluster = Cluster::default();
    load(&mut cluster, &conformance_dir().join("model.yaml"))?;
    load(&mut cluster, &case.yaml_path)?;
    cluster.finish();
    cluster.assign_missing_ips();

    let text = fs::read_to_string(&case.expect_path)
        .map_err(|e| format!("cannot read {}: {e}", case.expect_path.display()))?;
    let blocks = parse_expect(&text).map_err(|e| format!("{}: {e}", case.expect_path.display()))?;

    let pods: Vec<String> = cluster.pods.iter().map(|p| p.key()).collect();
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
        expected.push(b.matrix.reordered(&pods));
    }

    let observed = observe(&cluster);
    let named: BTreeSet<PortPair> = blocks
        .iter()
        .flat_map(|b| b.pairs.iter().flatten().copied())
        .collect();
    let star = blocks.iter().position(|b| b.pairs.is_none());
    let mut mismatches: Vec<Mismatch> = Vec::new();
    for pair in observed
        .keys()
        .copied()
        .chain(named.iter().copied())
        .collect::<BTreeSet<_>>()
    {
        let block = blocks
            .iter()
            .position(|b| b.pairs.as_ref().is_some_and(|p| p.contains(&pair)))
            .or(star)
            .ok_or_else(|| {
                format!("no block covers {pair}: name it in a block, or add a `*` block")
            })?;
        let seen = observed
            .get(&pair)
            .cloned()
            .unwrap_or_else(|| Matrix::filled(pods.clone(), Cell::NotServed));
        if seen == expected[block] {
            continue;
        }
        match mismatches
            .iter_mut()
            .find(|m| m.block_line == blocks[block].line && m.observed == seen)
        {
            Some(m) => m.pairs.push(pair),
            None => mismatches.push(Mismatch {
                pairs: vec![pair],
                block_line: blocks[block].line,
                block_title: blocks[block].title(),
                expected: expected[block].clone(),
                observed: seen,
            }),
        }
    }
    Ok(mismatches)
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

fn cases() -> Vec<Case> {
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
    names
        .into_iter()
        .map(|name| Case {
            yaml_path: cases_dir().join(format!("{name}.yaml")),
            expect_path: cases_dir().join(format!("{name}.expect")),
            name,
        })
        .collect()
}

#[test]
fn palisade_agrees_with_the_upstream_e2e_suite() {
    let cases = cases();
    let mut report = String::new();
    let mut failed = Vec::new();
    for case in &cases {
        match check(case) {
            Ok(mismatches) if mismatches.is_empty() => {}
            Ok(mismatches) => {
                failed.push(case.name.clone());
                report.push_str(&format!(
                    "\n=== {}: upstream {}\n",
                    case.name,
                    case.upstream()
                ));
                for m in &mismatches {
                    let pairs: Vec<String> = m.pairs.iter().map(ToString::to_string).collect();
                    report.push_str(&format!(
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
                    report.push_str(&side_by_side(m));
                }
            }
            Err(e) => {
                failed.push(case.name.clone());
                report.push_str(&format!(
                    "\n=== {}: upstream {}\n  cannot check: {e}\n",
                    case.name,
                    case.upstream()
                ));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{report}\n{} of {} conformance cases disagree with upstream: {}",
        failed.len(),
        cases.len(),
        failed.join(", ")
    );
}

#[test]
fn every_case_has_its_expectation_and_upstream_name() {
    let mut stems: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in fs::read_dir(cases_dir()).expect("tests/conformance/cases is readable") {
        let name = entry
            .expect("a directory entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        let Some((stem, ext)) = name.rsplit_once('.') else {
            panic!("{name}: a case file is NNN-slug.yaml or NNN-slug.expect");
        };
        stems
            .entry(stem.to_owned())
            .or_default()
            .insert(ext.to_owned());
    }
    let mut problems = Vec::new();
    for (stem, exts) in &stems {
        for ext in exts
            .iter()
            .filter(|e| !matches!(e.as_str(), "yaml" | "expect"))
        {
            problems.push(format!(
                "{stem}.{ext}: a case file is NNN-slug.yaml or NNN-slug.expect"
            ));
        }
        for needed in ["yaml", "expect"] {
            if !exts.contains(needed) {
                problems.push(format!("{stem}: no {stem}.{needed}"));
            }
        }
        if exts.contains("yaml") {
            let text =
                fs::read_to_string(cases_dir().join(format!("{stem}.yaml"))).unwrap_or_default();
            let first = text.lines().next().unwrap_or_default();
            let named = first
                .strip_prefix("# upstream: \"")
                .is_some_and(|rest| rest.len() > 1 && rest.ends_with('"'));
            if !named {
                problems.push(format!(
                    "{stem}.yaml: the first line must be `# upstream: \"<the It(...) description>\"`"
                ));
            }
        }
    }
    let complete = stems
        .values()
        .filter(|e| e.contains("yaml") && e.contains("expect"))
        .count();
    if complete < MIN_CASES {
        problems.push(format!(
            "only {complete} cases; the suite needs at least {MIN_CASES}"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn expect_files_name_the_line_at_fault() {
    let short_row = "TCP/80\n     x/a x/b\nx/a   .   X\nx/b   .\n";
    assert_eq!(
        parse_expect(short_row).unwrap_err(),
        "line 4: row x/b has 1 cells for 2 columns"
    );
    let no_header = "# c\n     x/a\nx/a .\n";
    assert!(parse_expect(no_header)
        .unwrap_err()
        .starts_with("line 2: expected a block header"));
    let twice = "*\n x/a\nx/a .\n*\n x/a\nx/a .\n";
    assert_eq!(
        parse_expect(twice).unwrap_err(),
        "line 4: * is covered by an earlier block already"
    );
    let bad_cell = "UDP/81\n x/a\nx/a o\n";
    assert_eq!(
        parse_expect(bad_cell).unwrap_err(),
        "line 3: \"o\" is not a cell: use `.`, `X` or `-`"
    );
}
