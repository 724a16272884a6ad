//! Reading Kubernetes manifests (YAML or JSON, many documents, `kind: List`) into cluster
//! objects. An invalid object is reported with its file, line, object and field, and left
//! out; the others still load.

mod cilium;
mod field;
mod kube;
mod netpol;

use std::collections::BTreeMap;
use std::fmt;

pub use cilium::{UNSUPPORTED_EGRESS_FIELDS, UNSUPPORTED_INGRESS_FIELDS};
pub use field::FieldError;

use crate::cluster::{Cluster, EndpointSlice, Namespace, Pod, Service, MODE_ANNOTATION};
use crate::document::{parse_stream, Node, SyntaxError, Value};
use crate::policy::{Policy, PolicyId, PolicyKind};
use field::{Errors, Field};

/// One object read from a manifest.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    /// A Namespace.
    Namespace(Namespace),
    /// A Pod.
    Pod(Pod),
    /// A Service.
    Service(Service),
    /// An EndpointSlice.
    EndpointSlice(EndpointSlice),
    /// A policy of any kind (a CiliumNetworkPolicy with `specs` gives several).
    Policies(Vec<Policy>),
}

impl Object {
    /// The object, with `file` recorded as where its policies were written.
    pub fn in_file(mut self, file: &str) -> Self {
        if let Object::Policies(policies) = &mut self {
            let file: std::sync::Arc<str> = file.into();
            for p in policies {
                p.source.file = file.clone();
            }
        }
        self
    }
}

/// The kind of an object palisade reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    /// A Namespace.
    Namespace,
    /// A Pod.
    Pod,
    /// A Service.
    Service,
    /// An EndpointSlice.
    EndpointSlice,
    /// A policy of one kind.
    Policy(PolicyKind),
}

/// Which object this is: a newer object with the same key replaces it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// The kind.
    pub kind: ObjectKind,
    /// The namespace (empty for a Namespace).
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl Object {
    /// The object's key; `None` for a policy object that gave no policy.
    pub fn key(&self) -> Option<ObjectKey> {
        let (kind, namespace, name) = match self {
            Object::Namespace(n) => (ObjectKind::Namespace, "", n.name.as_str()),
            Object::Pod(p) => (ObjectKind::Pod, p.namespace.as_str(), p.name.as_str()),
            Object::Service(s) => (ObjectKind::Service, s.namespace.as_str(), s.name.as_str()),
            Object::EndpointSlice(s) => (
                ObjectKind::EndpointSlice,
                s.namespace.as_str(),
                s.name.as_str(),
            ),
            Object::Policies(p) => return Some(policy_object(&p.first()?.id)),
        };
        Some(ObjectKey {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }
}

/// The key of the object a policy was read from.
pub fn policy_object(id: &PolicyId) -> ObjectKey {
    // The policies of a CiliumNetworkPolicy's `specs` are named `name#i`.
    let name = id.name.split('#').next().unwrap_or_default();
    ObjectKey {
        kind: ObjectKind::Policy(id.kind),
        namespace: id.namespace.clone(),
        name: name.to_owned(),
    }
}

/// What reading one document (or one item of a `List`) gave.
#[derive(Debug)]
pub enum Read {
    /// An object palisade uses.
    Object {
        /// `Kind namespace/name`.
        what: String,
        /// The object.
        object: Object,
    },
    /// A kind palisade has no use for.
    Skipped {
        /// `apiVersion Kind namespace/name`.
        what: String,
    },
    /// An object with errors; it is left out.
    Invalid {
        /// `Kind namespace/name`, as far as it could be read.
        what: String,
        /// Every error found in it.
        errors: Vec<FieldError>,
    },
    /// A document that is not valid YAML.
    Syntax(SyntaxError),
}

/// One read document and the line it starts on.
#[derive(Debug)]
pub struct Entry {
    /// The line of the document (or list item).
    pub line: u32,
    /// What it gave.
    pub read: Read,
}

/// An object or document palisade could not accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectError {
    /// The file.
    pub file: String,
    /// The line of the field at fault.
    pub line: u32,
    /// `Kind namespace/name`, when the document got that far.
    pub what: Option<String>,
    /// The field's path, when the error is about one field.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ObjectError {
    /// `file:line: Kind namespace/name: field: what is wrong` (without `file:line: ` for
    /// an object that did not come from a file, e.g. from the Kubernetes API).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.file.is_empty() {
            write!(f, "{}:{}: ", self.file, self.line)?;
        }
        if let Some(what) = &self.what {
            write!(f, "{what}: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Something worth saying that is not an error, e.g. a kind that was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The file.
    pub file: String,
    /// The line.
    pub line: u32,
    /// What happened.
    pub message: String,
}

impl fmt::Display for Notice {
    /// `file:line: what happened` (what happened alone when not about a file).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.file.is_empty() {
            return f.write_str(&self.message);
        }
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

/// The errors and notices of a load.
#[derive(Debug, Default)]
pub struct Report {
    /// Objects left out, and why.
    pub errors: Vec<ObjectError>,
    /// Things skipped.
    pub notices: Vec<Notice>,
}

impl Report {
    /// Whether anything was invalid.
    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }
}

impl Report {
    /// Records the errors or notice an entry of `file` gives, if any.
    pub fn record(&mut self, file: &str, entry: &Entry) {
        match &entry.read {
            Read::Object { .. } => {}
            Read::Syntax(e) => self.errors.push(ObjectError {
                file: file.to_owned(),
                line: e.line,
                what: None,
                path: String::new(),
                message: format!("not valid YAML: {}", e.message),
            }),
            Read::Skipped { what } => self.notices.push(Notice {
                file: file.to_owned(),
                line: entry.line,
                message: format!(
                    "skipped {what}: palisade reads Namespace, Pod, Service, EndpointSlice, \
                     NetworkPolicy, PalisadePolicy and CiliumNetworkPolicy"
                ),
            }),
            Read::Invalid { what, errors } => {
                self.errors.extend(errors.iter().map(|e| ObjectError {
                    file: file.to_owned(),
                    line: if e.line == 0 { entry.line } else { e.line },
                    what: Some(what.clone()),
                    path: e.path.clone(),
                    message: e.message.clone(),
                }))
            }
        }
    }
}

/// Reads every document of a manifest file, the items of `List`s one by one.
pub fn read_str(text: &str) -> Vec<Entry> {
    fn walk(node: &Node, out: &mut Vec<Entry>) {
        if let (Some(kind), Some(items)) = (node.get_str("kind"), node.get("items")) {
            if kind == "List" || kind.ends_with("List") {
                if let Value::Seq(items) = &items.value {
                    items.iter().for_each(|item| walk(item, out));
                    return;
                }
            }
        }
        out.push(Entry {
            line: node.line,
            read: read_object(node),
        });
    }
    let mut out = Vec::new();
    for doc in parse_stream(text) {
        match doc.root {
            Err(e) => out.push(Entry {
                line: doc.line,
                read: Read::Syntax(e),
            }),
            Ok(None) => {}
            Ok(Some(root)) => walk(&root, &mut out),
        }
    }
    out
}

/// Reads every document of `text` (from `file`, used in messages) into `cluster`.
pub fn load_str(cluster: &mut Cluster, file: &str, text: &str, report: &mut Report) {
    for entry in read_str(text) {
        report.record(file, &entry);
        if let Read::Object { object, .. } = entry.read {
            cluster.add(object.in_file(file));
        }
    }
}

/// Reads one object of a manifest.
pub fn read_object(node: &Node) -> Read {
    let errors = Errors::default();
    let root = Field::root(node, &errors);
    let kind = root.get("kind").required_str().unwrap_or_default();
    let api_version = root.get("apiVersion").str().unwrap_or_default();
    let group = api_version.split_once('/').map_or("", |(g, _)| g);
    let name_of = |m: &Node| {
        let meta = m.get("metadata");
        let name = meta.and_then(|m| m.get_str("name")).unwrap_or("<no name>");
        match kind {
            "Namespace" => format!("{kind} {name}"),
            _ => format!(
                "{kind} {}/{name}",
                meta.and_then(|m| m.get_str("namespace"))
                    .unwrap_or("default")
            ),
        }
    };
    let what = name_of(node);
    let known = matches!(
        (kind, group),
        ("Namespace" | "Pod" | "Service", "")
            | ("EndpointSlice", "discovery.k8s.io")
            | ("NetworkPolicy", "networking.k8s.io" | "extensions")
            | ("PalisadePolicy", "palisade.dev")
            | ("CiliumNetworkPolicy", "cilium.io")
    );
    if !known && errors.is_empty() {
        return Read::Skipped {
            what: format!("{api_version} {what}"),
        };
    }
    let meta = kube::meta(&root);
    let obj = match kind {
        "Namespace" => Object::Namespace(with_mode(&root, kube::namespace(&root))),
        "Pod" => Object::Pod(with_mode(&root, kube::pod(&root))),
        "Service" => Object::Service(kube::service(&root)),
        "EndpointSlice" => Object::EndpointSlice(kube::endpoint_slice(&root)),
        "NetworkPolicy" => {
            let audit = audit(&root);
            Object::Policies(vec![netpol::network_policy(&root, &meta, audit)])
        }
        "PalisadePolicy" | "CiliumNetworkPolicy" => {
            let audit = audit(&root);
            let kind = match kind {
                "PalisadePolicy" => PolicyKind::PalisadePolicy,
                _ => PolicyKind::CiliumNetworkPolicy,
            };
            Object::Policies(cilium::policy(&root, &meta, kind, audit))
        }
        _ => Object::Policies(Vec::new()),
    };
    if errors.is_empty() {
        Read::Object { what, object: obj }
    } else {
        Read::Invalid {
            what,
            errors: errors.into_inner(),
        }
    }
}

/// Reads `palisade.dev/mode`, which must be `audit` or `enforce`.
fn audit(root: &Field<'_>) -> bool {
    let f = root.get("metadata").get("annotations").get(MODE_ANNOTATION);
    match f.str() {
        None | Some("enforce") => false,
        Some("audit") => true,
        Some(other) => {
            f.error(format!("{other:?} is not a mode: use audit or enforce"));
            false
        }
    }
}

/// Validates the mode annotation of a namespace or pod (kept in its annotations).
fn with_mode<T>(root: &Field<'_>, obj: T) -> T {
    audit(root);
    obj
}

impl Cluster {
    /// Every object of the cluster by key, the policies of one object together.
    pub fn objects(&self) -> BTreeMap<ObjectKey, Object> {
        let mut out = BTreeMap::new();
        let mut add = |o: Object| {
            if let Some(k) = o.key() {
                out.insert(k, o);
            }
        };
        self.namespaces
            .values()
            .for_each(|n| add(Object::Namespace(n.clone())));
        self.pods.iter().for_each(|p| add(Object::Pod(p.clone())));
        self.services
            .iter()
            .for_each(|s| add(Object::Service(s.clone())));
        self.endpoint_slices
            .iter()
            .for_each(|s| add(Object::EndpointSlice(s.clone())));
        let mut policies: BTreeMap<ObjectKey, Vec<Policy>> = BTreeMap::new();
        for p in &self.policies {
            policies
                .entry(policy_object(&p.id))
                .or_default()
                .push(p.clone());
        }
        out.extend(policies.into_iter().map(|(k, p)| (k, Object::Policies(p))));
        out
    }

    /// Adds an object read from a manifest; call [`Cluster::finish`] when all are in.
    pub fn add(&mut self, obj: Object) {
        match obj {
            Object::Namespace(n) => {
                self.namespaces.insert(n.name.clone(), n);
            }
            Object::Pod(p) => self.pods.push(p),
            Object::Service(s) => self.services.push(s),
            Object::EndpointSlice(s) => self.endpoint_slices.push(s),
            Object::Policies(p) => self.policies.extend(p),
        }
    }
}
