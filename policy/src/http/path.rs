//! The path of a request as rules see it and as the app receives it: one normal form, so
//! that what is judged is what the app gets.
//!
//! Normalised: percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded,
//! the remaining percent-encodings are written in upper case, `//` runs are merged into one
//! `/`, and dot segments (`.` and `..`, also when written `%2e`) are resolved as RFC 3986
//! section 5.2.4 says (`..` above the root stays at the root). Refused: an encoded `/` or
//! `\` (`%2F`, `%5C`), a raw `\`, a broken percent-encoding, a path that is not absolute,
//! and control characters, because servers disagree about what they mean.

use std::borrow::Cow;
use std::fmt;

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The path does not start with `/` (and is not `*`).
    NotAbsolute,
    /// `%2F` or `%5C`: an encoded separator, which servers split on or not.
    EncodedSeparator,
    /// A raw `\`, which some servers take as `/`.
    Backslash,
    /// `%` not followed by two hexadecimal digits.
    BadPercent,
    /// A control character or space.
    Control,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "the path does not start with /",
            PathError::EncodedSeparator => "the path has an encoded / or \\ (%2F, %5C)",
            PathError::Backslash => "the path has a \\",
            PathError::BadPercent => "the path has a % not followed by two hex digits",
            PathError::Control => "the path has a control character or a space",
        })
    }
}

impl std::error::Error for PathError {}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Whether `path` is already in normal form, checked without allocating: the common case.
fn is_normal(path: &[u8]) -> Result<bool, PathError> {
    let mut normal = true;
    let mut i = 0;
    while i < path.len() {
        match path[i] {
            b'%' => {
                let (Some(h), Some(l)) = (
                    path.get(i + 1).copied().and_then(hex),
                    path.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadPercent);
                };
                let byte = h << 4 | l;
                if byte == b'/' || byte == b'\\' {
                    return Err(PathError::EncodedSeparator);
                }
                if unreserved(byte)
                    || path[i + 1].is_ascii_lowercase()
                    || path[i + 2].is_ascii_lowercase()
                {
                    normal = false;
                }
                i += 3;
                continue;
            }
            b'\\' => return Err(PathError::Backslash),
            b if b < 0x21 || b == 0x7f => return Err(PathError::Control),
            b'/' if path.get(i + 1) == Some(&b'/') => normal = false,
            b'.' if (i == 0 || path[i - 1] == b'/')
                && matches!(
                    path.get(i + 1..),
                    Some([] | [b'/', ..] | [b'.'] | [b'.', b'/', ..])
                ) =>
            {
                normal = false
            }
            _ => {}
        }
        i += 1;
    }
    Ok(normal)
}

/// The normal form of a request's path (without its query), or why it is refused. `*`
/// (the target of `OPTIONS *`) is kept as it is.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if path == "*" {
        return Ok(Cow::Borrowed(path));
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(path.as_bytes())? {
        return Ok(Cow::Borrowed(path));
    }
    // Decode unreserved characters and upper-case the other escapes, segment by segment.
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            // is_normal checked every escape has two hex digits.
            let byte = hex(bytes[i + 1]).unwrap_or(0) << 4 | hex(bytes[i + 2]).unwrap_or(0);
            if unreserved(byte) {
                decoded.push(byte as char);
            } else {
                decoded.push('%');
                decoded.push(bytes[i + 1].to_ascii_uppercase() as char);
                decoded.push(bytes[i + 2].to_ascii_uppercase() as char);
            }
            i += 3;
        } else {
            // Multi-byte characters are copied whole: only ASCII bytes are looked at.
            let start = i;
            i += 1;
            while i < bytes.len() && bytes[i] != b'%' {
                i += 1;
            }
            decoded.push_str(&path[start..i]);
        }
    }
    // Resolve dot segments and merge empty ones; the trailing `/` stays significant.
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut trailing = false;
    for (n, seg) in segments.iter().enumerate() {
        match *seg {
            "." | "" => trailing = n == last,
            ".." => {
                out.pop();
                trailing = n == last;
            }
            s => {
                out.push(s);
                trailing = false;
            }
        }
    }
    let mut normal = String::with_capacity(decoded.len());
    for seg in &out {
        normal.push('/');
        normal.push_str(seg);
    }
    if trailing || out.is_empty() {
        normal.push('/');
    }
    Ok(Cow::Owned(normal))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_paths_are_borrowed() {
        for p in [
            "/",
            "/api/v1/orders",
            "/a/b/",
            "/a%20b",
            "/%C3%A9",
            "/.well-known/x",
            "/a..b",
            "*",
        ] {
            assert!(matches!(normalize(p), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn what_is_normalised() {
        let cases = [
            ("/api/v1/../admin", "/api/admin"),
            ("//admin", "/admin"),
            ("/a//b///c", "/a/b/c"),
            ("/%2e%2e/admin", "/admin"),
            ("/api/%2E%2E/admin", "/admin"),
            ("/api/%2e/x", "/api/x"),
            ("/./a/./b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/..", "/"),
            ("/../../etc", "/etc"),
            ("/%41%7e%2D", "/A~-"),
            ("/a%3ab", "/a%3Ab"),
            ("/a/", "/a/"),
            ("/a//", "/a/"),
            ("/é/../x", "/x"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn what_is_refused() {
        let cases = [
            ("/a%2Fb", PathError::EncodedSeparator),
            ("/a%2fb", PathError::EncodedSeparator),
            ("/a%5cb", PathError::EncodedSeparator),
            ("/a\\..\\admin", PathError::Backslash),
            ("/a%zz", PathError::BadPercent),
            ("/a%4", PathError::BadPercent),
            ("api", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
            ("/a b", PathError::Control),
            ("/a\tb", PathError::Control),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input), Err(want), "{input}");
        }
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        for p in ["/a/../b//c/%2e/", "/%7Eu/./x/..", "//", "/a%3a"] {
            let once = normalize(p).unwrap().into_owned();
            assert_eq!(normalize(&once).unwrap(), once.as_str(), "{p}");
        }
    }
}
