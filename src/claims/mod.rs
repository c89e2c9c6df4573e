//! Claims: submission, the review workflow, verdicts (AI and human), public reads, search and
//! trending.
//!
//! Lifecycle: `pending -> ai_processing -> ai_verdict | ai_failed -> human_review -> resolved`,
//! plus `rejected`. While the AI is off, pending claims wait in the review queue directly.

pub mod review;
pub mod routes;
pub mod store;
pub mod trending;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json as SqlJson;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::accounts::text_enum;

text_enum!(
    /// Where a claim is in its review.
    ClaimStatus {
        Pending = "pending",
        AiProcessing = "ai_processing",
        AiVerdict = "ai_verdict",
        AiFailed = "ai_failed",
        HumanReview = "human_review",
        Resolved = "resolved",
        Rejected = "rejected",
    }
);

text_enum!(
    /// A verdict's finding.
    Label {
        True = "true",
        False = "false",
        Misleading = "misleading",
        Satire = "satire",
        NeedsContext = "needs_context",
        Unverifiable = "unverifiable",
    }
);

text_enum!(
    /// Who produced a verdict.
    VerdictKind { Ai = "ai", Human = "human" }
);

text_enum!(
    /// Claim topics.
    Category {
        Politics = "politics",
        Health = "health",
        Economy = "economy",
        Education = "education",
        Environment = "environment",
        Technology = "technology",
        Security = "security",
        Entertainment = "entertainment",
        Sports = "sports",
        Other = "other",
    }
);

impl ClaimStatus {
    /// Statuses that sit in the review queue.
    pub const QUEUED: [ClaimStatus; 4] = [
        Self::Pending,
        Self::AiVerdict,
        Self::AiFailed,
        Self::HumanReview,
    ];

    /// The legal moves of the workflow; anything else is a 409.
    pub fn can_move_to(self, next: ClaimStatus) -> bool {
        use ClaimStatus::*;
        matches!(
            (self, next),
            (Pending, AiProcessing)
                | (AiProcessing, AiVerdict | AiFailed | Pending)
                | (Pending | AiVerdict | AiFailed, HumanReview)
                | (HumanReview, HumanReview | Resolved)
                | (Pending | AiVerdict | AiFailed | HumanReview, Rejected)
        )
    }
}

/// A cited source.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub title: String,
    pub url: String,
}

/// A claim row.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct Claim {
    pub id: Uuid,
    #[serde(skip)]
    pub submitter_id: Option<Uuid>,
    pub text: String,
    #[sqlx(try_from = "String")]
    pub category: Category,
    pub source_url: Option<String>,
    pub video_url: Option<String>,
    pub image_url: Option<String>,
    #[sqlx(try_from = "String")]
    pub status: ClaimStatus,
    pub priority: i32,
    pub assigned_to: Option<Uuid>,
    pub assigned_at: Option<DateTime<Utc>>,
    pub rejection_reason: Option<String>,
    pub view_count: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
}

/// A verdict row.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct Verdict {
    #[serde(skip)]
    pub claim_id: Uuid,
    #[sqlx(try_from = "String")]
    pub kind: VerdictKind,
    #[sqlx(try_from = "String")]
    pub label: Label,
    pub explanation: String,
    #[schema(value_type = Vec<Source>)]
    pub sources: SqlJson<Vec<Source>>,
    pub confidence: Option<f64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What the public is told: the human verdict when there is one, else the AI verdict with its
/// disclaimer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PublicVerdict {
    pub label: Label,
    pub explanation: String,
    pub sources: Vec<Source>,
    /// `human` or `ai`.
    pub source: VerdictKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disclaimer: Option<&'static str>,
}

pub const AI_DISCLAIMER: &str =
    "This verdict was produced by an AI model and has not yet been reviewed by a fact-checker.";

/// A claim with its verdicts, as the API returns it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ClaimView {
    #[serde(flatten)]
    pub claim: Claim,
    /// The verdict shown to the public, if any.
    pub verdict: Option<PublicVerdict>,
    /// Both verdicts, for the submitter and reviewers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub human_verdict: Option<Verdict>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ai_verdict: Option<Verdict>,
    /// The AI's attempts on this claim (reviewers only, on the detail view).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ai_run: Option<crate::ai::AiRun>,
}

impl ClaimView {
    pub fn new(claim: Claim, verdicts: Vec<Verdict>, show_all: bool) -> Self {
        let human = verdicts
            .iter()
            .find(|v| v.kind == VerdictKind::Human)
            .cloned();
        let ai = verdicts.iter().find(|v| v.kind == VerdictKind::Ai).cloned();
        let public = match (&human, &ai) {
            (Some(h), _) => Some(PublicVerdict {
                label: h.label,
                explanation: h.explanation.clone(),
                sources: h.sources.0.clone(),
                source: VerdictKind::Human,
                disclaimer: None,
            }),
            (None, Some(a)) => Some(PublicVerdict {
                label: a.label,
                explanation: a.explanation.clone(),
                sources: a.sources.0.clone(),
                source: VerdictKind::Ai,
                disclaimer: Some(AI_DISCLAIMER),
            }),
            _ => None,
        };
        Self {
            claim,
            verdict: public,
            human_verdict: if show_all { human } else { None },
            ai_verdict: if show_all { ai } else { None },
            ai_run: None,
        }
    }
}

/// SHA-256 of the text, lower-cased with whitespace collapsed: repeat submissions of one claim
/// share it.
pub fn text_hash(text: &str) -> String {
    use sha2::{Digest, Sha256};
    let normalized = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase();
    Sha256::digest(normalized.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workflow_allows_only_its_transitions() {
        use ClaimStatus::*;
        assert!(Pending.can_move_to(HumanReview));
        assert!(AiVerdict.can_move_to(HumanReview));
        assert!(HumanReview.can_move_to(Resolved));
        assert!(!Pending.can_move_to(Resolved));
        assert!(!Resolved.can_move_to(HumanReview));
        assert!(!Rejected.can_move_to(Pending));
        assert!(!Resolved.can_move_to(Rejected));
    }

    #[test]
    fn repeat_submissions_share_a_hash() {
        assert_eq!(
            text_hash("Water  boils at 50C"),
            text_hash(" water boils at 50c ")
        );
        assert_ne!(text_hash("a"), text_hash("b"));
    }
}
