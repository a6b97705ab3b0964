//! What the runner needs from configuration, checked at start so a bad
//! catalog, key or URL stops the process with its reason.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::config::Config;
use crate::crypto::GrantKey;
use crate::metrics::Metrics;
use crate::planner::deep_research::client::{POLL_TIMEOUT, SUBMIT_TIMEOUT};
use crate::planner::deep_research::DeepResearchClient;
use crate::planner::limiter::LimitConfig;
use crate::planner::llm::{LimiterMetrics, LlmClient, LlmConfig};
use crate::planner::research::{ResearchClient, DEFAULT_DISCOVER_TIMEOUT, DEFAULT_SEARCH_TIMEOUT};
use crate::planner::ToolCatalog;
use crate::run::deep::DeepResearch;
use crate::run::{Planner, Runner, RunnerDeps};

use super::{ServiceContext, Term};

/// Loads the grant key: a bad or missing key turns grants off with a
/// warning, or stops the start when `MANA_AI_REQUIRE_GRANTS=true`.
pub fn load_grant_key(config: &Config) -> anyhow::Result<Option<GrantKey>> {
    let grants = &config.grants;
    if grants.private_key_pem.is_empty() {
        if grants.require_grants {
            anyhow::bail!("MANA_AI_PRIVATE_KEY_PEM: is not set, and MANA_AI_REQUIRE_GRANTS=true");
        }
        tracing::info!("MANA_AI_PRIVATE_KEY_PEM not set: mission grants are off");
        return Ok(None);
    }
    let pem = grants.private_key_pem.expose();
    match GrantKey::from_pkcs8_pem(pem) {
        Ok(key) => Ok(Some(key)),
        Err(e) if grants.require_grants => Err(anyhow::anyhow!(
            "MANA_AI_PRIVATE_KEY_PEM: {e}{}",
            pem_hint(pem)
        )),
        Err(e) => {
            let hint = pem_hint(pem);
            tracing::warn!(error = %format!("{e}{hint}"), "MANA_AI_PRIVATE_KEY_PEM unusable: mission grants are off");
            Ok(None)
        }
    }
}

/// A value that looks like a file path where the PEM text was expected.
fn pem_hint(value: &str) -> &'static str {
    let value = value.trim();
    if !value.contains("-----") && !value.contains('\n') && value.len() < 4096 {
        "; the variable holds the PEM text itself, not a file path \
         (MANA_AI_PRIVATE_KEY_PEM=\"$(cat key.pem)\")"
    } else {
        ""
    }
}

/// Loads the tool catalog: the one `MANA_AI_TOOL_CATALOG` names, else the
/// built-in one of the database's generation (`Config::generation`).
pub fn load_catalog(config: &Config) -> anyhow::Result<ToolCatalog> {
    ToolCatalog::chosen(config.planner.tool_catalog.as_ref(), config.generation)
        .map_err(|e| anyhow::anyhow!("MANA_AI_TOOL_CATALOG: {e}"))
}

/// The LLM planner of a config.
pub fn llm_planner(config: &Config, metrics: &Metrics) -> anyhow::Result<Planner> {
    let planner = &config.planner;
    let mut llm = LlmConfig::new(
        planner.llm_url.clone(),
        config.http.service_key.clone(),
        planner.llm_model.clone(),
    );
    llm.timeout = planner.llm_timeout;
    llm.max_attempts = planner.llm_max_attempts;
    llm.max_tokens = (planner.llm_max_tokens > 0).then_some(planner.llm_max_tokens);
    llm.structured = planner.llm_structured;
    llm.rounds = planner.planner_rounds;
    let limit = LimitConfig::new(config.runner.max_concurrent_runs);
    let client = LlmClient::new(llm)
        .map_err(|e| anyhow::anyhow!("MANA_LLM_URL: {e}"))?
        .with_duration_histogram(metrics.planner_request_duration.clone())
        .with_planner_metrics(metrics.planner.clone())
        .with_limiter(limit, Some(LimiterMetrics::of(metrics)));
    Ok(Planner::Llm(Box::new(client)))
}

/// Everything the runner needs that comes from configuration, checked at
/// start so a bad catalog or key stops the process with its reason.
pub struct RunnerSetup {
    pub planner: Planner,
    pub catalog: ToolCatalog,
    pub grant_key: Option<GrantKey>,
    pub research: Option<ResearchClient>,
    /// Deep research jobs, when `MANA_AI_DEEP_RESEARCH_ENABLED`.
    pub deep_research: Option<DeepResearch>,
    /// See [`RunnerDeps::prompt_observer`].
    pub prompt_observer: Option<mpsc::UnboundedSender<crate::run::PromptSummary>>,
}

impl RunnerSetup {
    pub fn from_config(config: &Config, metrics: &Metrics) -> anyhow::Result<RunnerSetup> {
        let planner = if config.planner.offline {
            tracing::warn!(
                "MANA_AI_PLANNER=offline: missions get a fixed example plan, not a model's answer"
            );
            Planner::Offline
        } else {
            llm_planner(config, metrics)?
        };
        Ok(RunnerSetup {
            planner,
            catalog: load_catalog(config)?,
            grant_key: load_grant_key(config)?,
            research: Some(
                ResearchClient::new(
                    &config.planner.api_url,
                    DEFAULT_DISCOVER_TIMEOUT,
                    DEFAULT_SEARCH_TIMEOUT,
                )
                .map_err(|e| anyhow::anyhow!("MANA_API_URL: {e}"))?,
            ),
            deep_research: deep_research(config, metrics)?,
            prompt_observer: None,
        })
    }

    /// The runner of one leadership term.
    pub fn into_runner(self, ctx: &ServiceContext, term: &Term) -> Arc<Runner> {
        let runner = &ctx.config.runner;
        Runner::new(RunnerDeps {
            pool: ctx.pool.clone(),
            metrics: ctx.metrics.clone(),
            clock: term.clock.clone(),
            wheel: term.wheel.clone(),
            planner: self.planner,
            research: self.research,
            deep_research: self.deep_research,
            catalog: self.catalog,
            grant_key: self.grant_key,
            default_tz: runner.default_timezone,
            max_concurrent: runner.max_concurrent_runs,
            max_failures: runner.max_failures,
            cost: runner.cost,
            fair_limits: runner.fair,
            max_field_bytes: ctx.config.reactor.max_field_bytes,
            generation: ctx.config.generation,
            param_max_chars: ctx.config.planner.param_max_chars,
            backoff: runner.retry_backoff.clone(),
            term_id: term.id,
            prompt_observer: self.prompt_observer,
            failpoint: failpoint_from_env(),
        })
    }
}

/// Deep research of a config, None when off. Its metrics' series are at 0
/// from the start either way.
fn deep_research(config: &Config, metrics: &Metrics) -> anyhow::Result<Option<DeepResearch>> {
    let research = &config.research;
    metrics.research_jobs.start_provider(&research.provider);
    if !research.enabled {
        return Ok(None);
    }
    let client = DeepResearchClient::new(
        &research.url,
        config.http.service_key.clone(),
        &research.provider,
        (SUBMIT_TIMEOUT, POLL_TIMEOUT),
    )
    .map_err(|e| anyhow::anyhow!("MANA_RESEARCH_URL: {e}"))?;
    Ok(Some(DeepResearch {
        client,
        provider: research.provider.clone(),
        poll_interval: research.poll_interval,
        max_age: research.max_age,
    }))
}

/// `MANA_AI_FAILPOINT`, read only by builds with the `test-hooks` feature
/// (the tests'); a release build never aborts on it.
#[cfg(feature = "test-hooks")]
fn failpoint_from_env() -> Option<String> {
    std::env::var("MANA_AI_FAILPOINT").ok()
}

#[cfg(not(feature = "test-hooks"))]
fn failpoint_from_env() -> Option<String> {
    None
}
