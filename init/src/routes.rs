//! The policy route that delivers marked packets locally: diverted UDP to the TPROXY
//! socket, and the app's replies to the inbound proxy's transparent TCP connections (sent
//! to a client's address) back to the proxy's socket. `ip rule add fwmark MARK lookup
//! TABLE pref TABLE` and a `local` default route in TABLE.

use crate::command::run;
use crate::config::{Config, Family};
use crate::Error;

/// The `ip` arguments that add our rule (run only when it is missing).
pub fn rule_add_args(config: &Config, family: Family) -> Vec<String> {
    let mut args = vec![family.ip_flag().to_string(), "rule".into(), "add".into()];
    args.extend(rule_selector(config));
    args
}

/// The `ip` arguments that add (or replace, so it can run again) our local route.
pub fn route_replace_args(config: &Config, family: Family) -> Vec<String> {
    let mut args = vec![
        family.ip_flag().to_string(),
        "route".into(),
        "replace".into(),
    ];
    args.extend(route_selector(config, family));
    args
}

fn rule_selector(config: &Config) -> Vec<String> {
    vec![
        "fwmark".into(),
        format!("{:#x}", config.mark),
        "lookup".into(),
        config.route_table.to_string(),
        "pref".into(),
        config.route_table.to_string(),
    ]
}

fn route_selector(config: &Config, family: Family) -> Vec<String> {
    vec![
        "local".into(),
        family.everything().into(),
        "dev".into(),
        "lo".into(),
        "table".into(),
        config.route_table.to_string(),
    ]
}

/// The commands as a person would type them, for `--dry-run`.
pub fn dry_run_commands(config: &Config, family: Family) -> Vec<String> {
    [
        rule_add_args(config, family),
        route_replace_args(config, family),
    ]
    .iter()
    .map(|args| format!("ip {}", args.join(" ")))
    .collect()
}

fn ip(args: &[String]) -> Result<String, Error> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run("ip", &args, None)
}

/// How many times our rule is present.
pub fn rule_count(config: &Config, family: Family) -> Result<usize, Error> {
    let shown = ip(&[family.ip_flag().into(), "rule".into(), "show".into()])?;
    Ok(count_rules(&shown, config))
}

/// Counts our rule in `ip rule show` output (`2190:\tfrom all fwmark 0x2190 lookup 2190`).
pub fn count_rules(shown: &str, config: &Config) -> usize {
    let expected = format!(
        "from all fwmark {:#x} lookup {}",
        config.mark, config.route_table
    );
    shown
        .lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(pref, rest)| {
            pref.trim() == config.route_table.to_string()
                && rest.split_whitespace().collect::<Vec<_>>().join(" ") == expected
        })
        .count()
}

/// Whether our local route is present.
pub fn route_present(config: &Config, family: Family) -> Result<bool, Error> {
    let shown = ip(&[
        family.ip_flag().into(),
        "route".into(),
        "show".into(),
        "table".into(),
        config.route_table.to_string(),
    ]);
    match shown {
        Ok(shown) => Ok(has_local_route(&shown)),
        // An empty table does not exist at all, and `ip` says so with a failure.
        Err(Error::Failed { output, .. }) if output.contains("FIB table does not exist") => {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Finds our route in `ip route show table N` output (`local default dev lo scope host`).
pub fn has_local_route(shown: &str) -> bool {
    shown
        .lines()
        .any(|l| l.trim_start().starts_with("local default dev lo"))
}

/// Adds the rule (when missing) and the route. Idempotent.
pub fn install(config: &Config, family: Family) -> Result<(), Error> {
    if rule_count(config, family)? == 0 {
        ip(&rule_add_args(config, family))?;
    }
    ip(&route_replace_args(config, family)).map(drop)
}

/// What is wrong with the installed rule and route, in sentences; empty when all is well.
pub fn check(config: &Config, family: Family) -> Result<Vec<String>, Error> {
    let mut problems = Vec::new();
    let rule = rule_selector(config).join(" ");
    match rule_count(config, family)? {
        1 => {}
        0 => problems.push(format!("{family}: the rule `{rule}` is missing")),
        n => problems.push(format!("{family}: the rule `{rule}` is present {n} times")),
    }
    if !route_present(config, family)? {
        let route = route_selector(config, family).join(" ");
        problems.push(format!("{family}: the route `{route}` is missing"));
    }
    Ok(problems)
}

/// Removes our rule (every copy) and our route; touches no other rule or route.
pub fn remove(config: &Config, family: Family) -> Result<(), Error> {
    let count = rule_count(config, family)?;
    for _ in 0..count {
        let mut args = vec![family.ip_flag().to_string(), "rule".into(), "del".into()];
        args.extend(rule_selector(config));
        ip(&args)?;
    }
    if route_present(config, family)? {
        let mut args = vec![family.ip_flag().to_string(), "route".into(), "del".into()];
        args.extend(route_selector(config, family));
        ip(&args)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dry_run_commands_are_these() {
        let config = Config::default();
        assert_eq!(
            dry_run_commands(&config, Family::V4),
            [
                "ip -4 rule add fwmark 0x2190 lookup 2190 pref 2190",
                "ip -4 route replace local 0.0.0.0/0 dev lo table 2190"
            ]
        );
        assert_eq!(
            dry_run_commands(&config, Family::V6)[1],
            "ip -6 route replace local ::/0 dev lo table 2190"
        );
    }

    #[test]
    fn finds_our_rule_and_route_in_ip_output() {
        let config = Config::default();
        let rules = "0:\tfrom all lookup local\n2190:\tfrom all fwmark 0x2190 lookup 2190\n\
                     2190:\tfrom all fwmark 0x1 lookup 2190\n32766:\tfrom all lookup main\n";
        assert_eq!(count_rules(rules, &config), 1);
        assert!(has_local_route("local default dev lo scope host \n"));
        assert!(has_local_route(
            "local default dev lo metric 1024 pref medium\n"
        ));
        assert!(!has_local_route("default via 10.0.0.1 dev eth0\n"));
    }
}
