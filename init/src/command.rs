//! Running the external tools (iptables-save/restore, ip) with errors that show their output.

use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::Error;

/// Runs `program args...`, feeding `stdin` if given, and returns its standard output.
/// A failure names the command line and carries what the program printed.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, Error> {
    let command_line = command_line(program, args);
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            command: command_line.clone(),
            source,
        })?;
    if let Some(input) = stdin {
        // The pipe exists: stdin was set to piped above. Dropping it closes the pipe so the
        // program sees the end of its input.
        let mut pipe = child.stdin.take().expect("stdin is piped");
        if let Err(source) = pipe.write_all(input.as_bytes()) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Spawn {
                command: command_line,
                source,
            });
        }
    }
    let output = child.wait_with_output().map_err(|source| Error::Spawn {
        command: command_line.clone(),
        source,
    })?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        return Ok(stdout);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let mut printed = String::new();
    for text in [stderr.trim_end(), stdout.trim_end()] {
        if !text.is_empty() {
            printed.push_str(text);
            printed.push('\n');
        }
    }
    if let Some(input) = stdin {
        printed.push_str(&failed_input_lines(&printed, input));
    }
    Err(Error::Failed {
        command: command_line,
        status: output.status.to_string(),
        output: indent(printed.trim_end()),
    })
}

/// The command line as a person would type it.
pub fn command_line(program: &str, args: &[&str]) -> String {
    let mut line = program.to_string();
    for arg in args {
        line.push(' ');
        line.push_str(arg);
    }
    line
}

/// iptables-restore names a failing line by number ("line 20 failed"); quote those lines
/// of the input so the message says which rule was refused.
fn failed_input_lines(printed: &str, input: &str) -> String {
    let lines: Vec<&str> = input.lines().collect();
    let mut quoted = String::new();
    let mut rest = printed;
    while let Some(at) = rest.find("line ") {
        rest = &rest[at + 5..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(n) = digits.parse::<usize>() {
            if let Some(line) = n.checked_sub(1).and_then(|i| lines.get(i)) {
                let entry = format!("input line {n}: {line}\n");
                if !quoted.contains(&entry) {
                    quoted.push_str(&entry);
                }
            }
        }
    }
    quoted
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_the_line_iptables_restore_refused() {
        let input = "*mangle\n:PALISADE_UDP_IN - [0:0]\n-A PALISADE_UDP_IN -j TPROXY\nCOMMIT\n";
        let printed = "iptables-restore: line 3 failed\n";
        assert_eq!(
            failed_input_lines(printed, input),
            "input line 3: -A PALISADE_UDP_IN -j TPROXY\n"
        );
    }

    #[test]
    fn a_missing_program_is_named() {
        let err = run("/nonexistent/palisade-test-tool", &["-x"], None).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("/nonexistent/palisade-test-tool -x"),
            "{text}"
        );
    }

    #[test]
    fn a_failing_program_shows_its_output() {
        let err = run("sh", &["-c", "echo oops >&2; exit 3"], None).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("oops") && text.contains('3'), "{text}");
    }
}
