//! The worker pool that gives submitted claims their first (AI) verdict, asynchronously.
//!
//! Each worker first holds a provider slot, then takes one pending claim atomically
//! (`pending -> ai_processing`, attempt counted, lease started), asks the provider, and stores
//! the verdict (`ai_verdict`, in the review queue) or the failure (`ai_failed`, with the reason
//! and raw answer kept). Claims left in `ai_processing` past the lease (a crash, a restart) are
//! requeued by worker 0 at start and then every half lease, and by the `ai_retry` job.

use std::time::Duration;

use chrono::Utc;
use tokio::sync::OwnedSemaphorePermit;

use super::{AiError, AiService, Message, parse, store};
use crate::{
    claims::{
        self, ClaimStatus,
        store::{VerdictInput, record_verdict},
    },
    config::AiConfig,
    state::AppState,
};

/// A claim in `ai_processing` longer than this is considered abandoned.
pub fn lease(config: &AiConfig) -> chrono::Duration {
    chrono::Duration::from_std(config.timeout * 2).unwrap_or(chrono::Duration::seconds(20))
}

/// How long an idle worker sleeps before looking again without being woken.
const IDLE_POLL: Duration = Duration::from_secs(5);

/// Runs the pool until [`AiService::stop`]. Does nothing while the AI is off.
pub async fn run(state: AppState) {
    if !state.ai.enabled() {
        return;
    }
    let mut workers = tokio::task::JoinSet::new();
    for index in 0..state.ai.config().workers {
        workers.spawn(work(state.clone(), index));
    }
    tracing::info!(
        workers = state.ai.config().workers,
        model = %state.ai.config().model,
        "AI workers started"
    );
    while workers.join_next().await.is_some() {}
}

async fn work(state: AppState, index: usize) {
    let ai = state.ai.clone();
    let lease_std = ai.config().timeout * 2;
    let mut next_sweep = tokio::time::Instant::now();
    while !ai.stopped() {
        if index == 0 && tokio::time::Instant::now() >= next_sweep {
            next_sweep = tokio::time::Instant::now() + lease_std / 2;
            let now = Utc::now();
            match store::requeue_stale(
                &state.db,
                now - lease(ai.config()),
                ai.config().max_attempts,
                now,
            )
            .await
            {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(claims = n, "requeued AI claims left past their lease");
                    for _ in 0..ai.config().workers {
                        ai.wake();
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot requeue stale AI claims"),
            }
        }
        ai.refresh_gauges();
        // While the circuit is open there is no point taking claims.
        if ai.circuit() == super::CircuitState::Open {
            idle(&ai, Duration::from_millis(500).min(lease_std)).await;
            continue;
        }
        let Some(slot) = ai.inner.limiter.acquire_background().await else {
            return;
        };
        if ai.stopped() {
            return;
        }
        match store::take_next(&state.db, ai.config().max_attempts, Utc::now()).await {
            Ok(Some(claim)) => {
                if let Some(pause) = process(&state, claim, slot).await {
                    idle(&ai, pause).await;
                }
            }
            Ok(None) => {
                drop(slot);
                let wait = if index == 0 {
                    IDLE_POLL.min(lease_std / 2)
                } else {
                    IDLE_POLL
                };
                idle(&ai, wait).await;
            }
            Err(e) => {
                drop(slot);
                tracing::warn!(error = %e, "AI worker cannot take a claim");
                idle(&ai, Duration::from_secs(1)).await;
            }
        }
    }
}

async fn idle(ai: &AiService, wait: Duration) {
    let _ = tokio::time::timeout(wait, ai.inner.wake.notified()).await;
}

/// Handles one claim; returns how long to pause when the provider cannot be asked now.
async fn process(
    state: &AppState,
    claim: store::Taken,
    slot: OwnedSemaphorePermit,
) -> Option<Duration> {
    let ai = &state.ai;
    let messages = [
        Message::new("system", parse::FACT_CHECK_SYSTEM),
        Message::new(
            "user",
            parse::fact_check_prompt(&claim.text, Some(&claim.category)),
        ),
    ];
    let answer = match ai.call(&messages, true, Some(slot)).await {
        Ok(completion) => ai.parse(&completion),
        Err(e) => Err(e),
    };
    let now = Utc::now();
    let mut pause = None;
    let result = match answer {
        Ok(verdict) => store_verdict(state, &claim, &verdict).await,
        Err(AiError::CircuitOpen { retry_after }) => {
            // Never reached the provider: give the attempt back and wait for the circuit.
            pause = Some(retry_after.clamp(Duration::from_millis(100), Duration::from_secs(5)));
            store::release(&state.db, claim.id, now)
                .await
                .map(drop)
                .map_err(Into::into)
        }
        Err(AiError::Unusable { reason, raw }) => {
            tracing::warn!(claim_id = %claim.id, %reason, "AI answer unusable; claim left for reviewers");
            store::mark_failed(&state.db, claim.id, &reason, Some(&raw), now)
                .await
                .map(drop)
                .map_err(Into::into)
        }
        Err(e) => {
            tracing::warn!(claim_id = %claim.id, error = %e, attempt = claim.ai_attempts, "AI verdict failed");
            store::mark_failed(&state.db, claim.id, &e.to_string(), None, now)
                .await
                .map(drop)
                .map_err(Into::into)
        }
    };
    if let Err(e) = result {
        // The lease brings the claim back if this write was lost.
        tracing::error!(claim_id = %claim.id, error = format!("{e:#}"), "cannot store the AI result");
    }
    pause
}

async fn store_verdict(
    state: &AppState,
    taken: &store::Taken,
    verdict: &super::AiVerdict,
) -> anyhow::Result<()> {
    let Some(claim) = claims::store::get_primary(&state.db, taken.id).await? else {
        return Ok(());
    };
    if claim.status != ClaimStatus::AiProcessing {
        // Requeued after its lease and picked up by a fact-checker meanwhile: their review wins.
        return Ok(());
    }
    let input = VerdictInput {
        kind: claims::VerdictKind::Ai,
        label: verdict.label,
        explanation: &verdict.explanation,
        sources: &verdict.sources,
        confidence: Some(verdict.confidence),
        author: None,
    };
    match record_verdict(&state.db, &claim, &input, Utc::now()).await? {
        Some(_) => {
            tracing::info!(claim_id = %claim.id, label = %verdict.label, confidence = verdict.confidence, "AI verdict stored")
        }
        None => {
            tracing::info!(claim_id = %claim.id, "claim deleted meanwhile; AI verdict dropped")
        }
    }
    Ok(())
}
