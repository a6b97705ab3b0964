//! The operations files in `deploy/`: the alert rules pass `promtool check
//! rules` and their own `promtool test rules` cases, and every mana-ai metric
//! the rules and the dashboard read is one the service exports. promtool
//! (Debian: `apt-get install prometheus`) is required: without it the test
//! fails, unless `MANA_AI_SKIP_PROMTOOL=1` says to skip those two checks
//! (the metric-name checks always run).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

const RULES: &str = "deploy/prometheus/alerts.yml";
const RULE_TESTS: &str = "deploy/prometheus/alerts_test.yml";
const DASHBOARD: &str = "deploy/grafana/mana-ai.json";

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Runs promtool with `args`, or says why it cannot and returns false.
fn promtool(args: &[&str]) -> bool {
    let out = match Command::new("promtool")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
    {
        Ok(out) => out,
        Err(e) if std::env::var_os("MANA_AI_SKIP_PROMTOOL").is_some() => {
            eprintln!("SKIPPED promtool {args:?} (MANA_AI_SKIP_PROMTOOL): {e}");
            return false;
        }
        Err(e) => panic!(
            "promtool is not runnable ({e}): apt-get install prometheus, \
             or set MANA_AI_SKIP_PROMTOOL=1 to skip the alert-rule checks"
        ),
    };
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    if promtool(&["check", "rules", RULES]) {
        promtool(&["test", "rules", RULE_TESTS]);
    }
}

/// Every `mana_ai_*` name in `text`, with histogram suffixes removed.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, _) in text.match_indices("mana_ai_") {
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        names.insert(base.to_string());
    }
    names
}

fn exported() -> BTreeSet<String> {
    let metrics = mana_ai::metrics::Metrics::new();
    // A labelled family shows in a scrape once it has a series.
    for family in [
        &metrics.decrypts,
        &metrics.grant_scope_violations,
        &metrics.grant_skips,
        &metrics.agent_decisions,
        &metrics.tokens_used,
        &metrics.run_outcomes,
        &metrics.poison_changes,
        &metrics.missions_stalled,
        &metrics.task_restarts,
    ] {
        family.with_label_values(&["x"]).inc_by(0);
    }
    metrics
        .http_requests
        .with_label_values(&["GET", "/health", "200"])
        .inc_by(0);
    metrics.research_jobs.start_provider("x");
    metrics
        .registry
        .gather()
        .iter()
        .map(|family| family.name().to_string())
        .collect()
}

#[test]
fn the_rules_and_the_dashboard_read_only_metrics_the_service_exports() {
    let exported = exported();
    for (file, text) in [(RULES, read(RULES)), (DASHBOARD, read(DASHBOARD))] {
        let used = metric_names(&text);
        assert!(used.len() >= 8, "{file} reads {used:?}");
        let unknown: Vec<_> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} reads metrics the service does not export: {unknown:?}"
        );
    }
}

#[test]
fn the_dashboard_is_grafana_json_with_a_query_per_panel() {
    let dashboard: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).expect("JSON");
    assert_eq!(dashboard["uid"], "mana-ai");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    for panel in panels {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(
            !targets.is_empty() && targets.iter().all(|t| t["expr"].is_string()),
            "{}",
            panel["title"]
        );
    }
}
