//! Who is asking for a policy stream. A proxy presents its pod's projected ServiceAccount
//! token (audience `palisade`); the controller asks the API server whose it is (a
//! TokenReview) and serves only the policy of the pod the token is bound to, and only
//! while that pod is the one the controller knows (same UID). Without an API server (the
//! folder source, the lab) a static token file maps each token to its pod, as the API
//! server's own static token authenticator does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use http::StatusCode;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use tokio::sync::Semaphore;

/// The audience a proxy's token must be issued for.
pub const AUDIENCE: &str = "palisade";
/// The extra field of a bound ServiceAccount token that names its pod.
pub const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
/// The extra field of a bound ServiceAccount token that holds its pod's UID.
pub const POD_UID: &str = "authentication.kubernetes.io/pod-uid";
/// TokenReviews in flight at once, at most: reconnecting proxies must not flood the API
/// server.
const REVIEWS_AT_ONCE: usize = 32;

/// The pod a token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `namespace/name`.
    pub pod: String,
    /// The pod's UID, when the token names it.
    pub uid: Option<String>,
}

/// Why a request is refused: its status, the reason it is counted under, and a message
/// that says what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 401, 403 or 503.
    pub status: StatusCode,
    /// The `reason` label of the refusal counter.
    pub reason: &'static str,
    /// What the proxy is told.
    pub message: String,
}

impl Refusal {
    /// A token that proves nothing (missing, unknown, expired, for another audience).
    pub fn unauthenticated(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            reason,
            message: message.into(),
        }
    }

    /// A valid token that does not give access to what is asked.
    pub fn forbidden(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            reason,
            message: message.into(),
        }
    }

    fn unavailable(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason,
            message: message.into(),
        }
    }
}

/// How tokens are checked.
pub enum Authenticator {
    /// By a TokenReview to the API server.
    Review(Box<TokenReviewer>),
    /// By a file of `token,namespace/pod` lines.
    Static(StaticTokens),
}

impl Authenticator {
    /// The pod a token speaks for.
    pub async fn authenticate(&self, token: &str) -> Result<Identity, Refusal> {
        match self {
            Self::Review(r) => r.review(token).await,
            Self::Static(s) => s.lookup(token),
        }
    }
}

/// Checks tokens with TokenReviews.
pub struct TokenReviewer {
    api: Api<TokenReview>,
    permits: Semaphore,
}

impl TokenReviewer {
    /// Reviews through this client.
    pub fn new(client: kube::Client) -> Self {
        Self {
            api: Api::all(client),
            permits: Semaphore::new(REVIEWS_AT_ONCE),
        }
    }

    async fn review(&self, token: &str) -> Result<Identity, Refusal> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: Some(vec![AUDIENCE.to_owned()]),
            },
            ..TokenReview::default()
        };
        let _permit = self.permits.acquire().await;
        let answer = self
            .api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "TokenReview failed");
                Refusal::unavailable(
                    "review-failed",
                    format!("the controller cannot check tokens now (TokenReview failed: {e}); retry later"),
                )
            })?;
        identity_of(&answer)
    }
}

/// The pod a reviewed token speaks for, or why it speaks for none.
pub fn identity_of(review: &TokenReview) -> Result<Identity, Refusal> {
    let status = review.status.clone().unwrap_or_default();
    if status.authenticated != Some(true) {
        let why = status
            .error
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "the API server does not know it".into());
        return Err(Refusal::unauthenticated(
            "invalid-token",
            format!("the token is not valid: {why}"),
        ));
    }
    if let Some(audiences) = &status.audiences {
        if !audiences.iter().any(|a| a == AUDIENCE) {
            return Err(Refusal::unauthenticated(
                "wrong-audience",
                format!("the token is for {audiences:?}, not for {AUDIENCE:?}: project a token with audience {AUDIENCE}"),
            ));
        }
    }
    let user = status.user.unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let namespace = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .map(|(ns, _)| ns.to_owned());
    let extra = user.extra.unwrap_or_default();
    let first = |key: &str| extra.get(key).and_then(|v| v.first()).cloned();
    let (Some(namespace), Some(name)) = (namespace, first(POD_NAME)) else {
        return Err(Refusal::forbidden(
            "not-bound",
            format!(
                "the token of {username:?} is not a ServiceAccount token bound to a pod: \
                 mount a projected ServiceAccount token (audience {AUDIENCE})"
            ),
        ));
    };
    Ok(Identity {
        pod: format!("{namespace}/{name}"),
        uid: first(POD_UID),
    })
}

/// A file of `token,namespace/pod` lines (`#` starts a comment), read again when it
/// changes.
pub struct StaticTokens {
    path: PathBuf,
    state: Mutex<(Option<SystemTime>, HashMap<String, String>)>,
}

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}:{line}: {message}")]
pub struct TokenFileError {
    path: String,
    line: usize,
    message: String,
}

fn read_tokens(path: &Path) -> Result<HashMap<String, String>, TokenFileError> {
    let error = |line, message: String| TokenFileError {
        path: path.display().to_string(),
        line,
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(0, e.to_string()))?;
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((token, pod)) = line.split_once(',') else {
            return Err(error(i + 1, "expected token,namespace/pod".into()));
        };
        let pod = pod.trim();
        if pod.split('/').count() != 2 || pod.split('/').any(str::is_empty) {
            return Err(error(i + 1, format!("{pod:?} is not namespace/pod")));
        }
        out.insert(token.trim().to_owned(), pod.to_owned());
    }
    Ok(out)
}

impl StaticTokens {
    /// The tokens of this file, which must be readable now.
    pub fn open(path: &Path) -> Result<Self, TokenFileError> {
        let tokens = read_tokens(path)?;
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        Ok(Self {
            path: path.to_owned(),
            state: Mutex::new((modified, tokens)),
        })
    }

    fn lookup(&self, token: &str) -> Result<Identity, Refusal> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if modified != state.0 {
            match read_tokens(&self.path) {
                Ok(tokens) => *state = (modified, tokens),
                // A file being rewritten: keep the tokens that were valid.
                Err(e) => tracing::warn!(error = %e, "keeping the tokens read before"),
            }
        }
        match state.1.get(token) {
            Some(pod) => Ok(Identity {
                pod: pod.clone(),
                uid: None,
            }),
            None => Err(Refusal::unauthenticated(
                "invalid-token",
                "the token is not valid: no such token",
            )),
        }
    }
}

/// The UID of every pod the controller knows from the API, to tell a pod from an older
/// pod of the same name.
#[derive(Default)]
pub struct PodUids(RwLock<HashMap<String, String>>);

impl PodUids {
    /// Records a pod's UID, or forgets the pod.
    pub fn set(&self, pod: &str, uid: Option<String>) {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        match uid {
            Some(uid) => map.insert(pod.to_owned(), uid),
            None => map.remove(pod),
        };
    }

    /// The UID of a pod, if it is known.
    pub fn get(&self, pod: &str) -> Option<String> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(pod)
            .cloned()
    }
}

/// Whether `identity` may read the policy of `pod`: the token's pod itself, and (when the
/// token names a UID) the very pod the controller knows under that name.
pub fn authorize(
    identity: &Identity,
    pod: &str,
    uids: Option<&Arc<PodUids>>,
) -> Result<(), Refusal> {
    if identity.pod != pod {
        return Err(Refusal::forbidden(
            "wrong-pod",
            format!(
                "the token was issued for pod {}; it may read only that pod's policy, not {pod}'s",
                identity.pod
            ),
        ));
    }
    let (Some(uids), Some(uid)) = (uids, &identity.uid) else {
        return Ok(());
    };
    match uids.get(pod) {
        Some(known) if known == *uid => Ok(()),
        Some(known) => Err(Refusal::forbidden(
            "wrong-uid",
            format!("the token was issued for an earlier pod {pod} (UID {uid}); the pod now has UID {known}"),
        )),
        None => Err(Refusal::forbidden(
            "unknown-pod",
            format!("pod {pod} is not known to the controller (yet); retry later"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};

    fn reviewed(authenticated: bool, username: &str, extra: &[(&str, &str)]) -> TokenReview {
        TokenReview {
            status: Some(TokenReviewStatus {
                authenticated: Some(authenticated),
                audiences: Some(vec![AUDIENCE.into()]),
                user: Some(UserInfo {
                    username: Some(username.into()),
                    extra: Some(
                        extra
                            .iter()
                            .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
                            .collect(),
                    ),
                    ..UserInfo::default()
                }),
                error: (!authenticated).then(|| "token has expired".into()),
            }),
            ..TokenReview::default()
        }
    }

    #[test]
    fn a_bound_token_names_its_pod_and_uid() {
        let r = reviewed(
            true,
            "system:serviceaccount:shop:web",
            &[(POD_NAME, "web-1"), (POD_UID, "u-1")],
        );
        assert_eq!(
            identity_of(&r).unwrap(),
            Identity {
                pod: "shop/web-1".into(),
                uid: Some("u-1".into())
            }
        );
        let r = reviewed(true, "system:serviceaccount:shop:web", &[]);
        assert_eq!(identity_of(&r).unwrap_err().reason, "not-bound");
        let r = reviewed(false, "", &[]);
        let refusal = identity_of(&r).unwrap_err();
        assert_eq!(refusal.status, StatusCode::UNAUTHORIZED);
        assert!(refusal.message.contains("token has expired"), "{refusal:?}");
    }

    #[test]
    fn only_the_same_pod_with_the_same_uid_is_served() {
        let uids = Arc::new(PodUids::default());
        uids.set("shop/web-1", Some("u-2".into()));
        let id = Identity {
            pod: "shop/web-1".into(),
            uid: Some("u-2".into()),
        };
        assert!(authorize(&id, "shop/web-1", Some(&uids)).is_ok());
        assert_eq!(
            authorize(&id, "shop/db-0", Some(&uids)).unwrap_err().reason,
            "wrong-pod"
        );
        let old = Identity {
            uid: Some("u-1".into()),
            ..id.clone()
        };
        assert_eq!(
            authorize(&old, "shop/web-1", Some(&uids))
                .unwrap_err()
                .reason,
            "wrong-uid"
        );
        uids.set("shop/web-1", None);
        assert_eq!(
            authorize(&id, "shop/web-1", Some(&uids))
                .unwrap_err()
                .reason,
            "unknown-pod"
        );
    }
}
