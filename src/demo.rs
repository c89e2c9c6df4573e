//! `hakikisha demo-data`: realistic volumes for dashboards and benchmarks, inserted in large
//! batched transactions (100,000 claims in seconds on SQLite).

use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};
use sqlx::types::Json as SqlJson;
use uuid::Uuid;

use crate::{
    claims::{Category, Label, Source, text_hash, trending},
    db_write,
    state::AppState,
};

/// What to create.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoOptions {
    /// Regular users (each also submits claims).
    #[arg(long, default_value_t = 1_000)]
    pub users: u32,
    /// Fact-checkers (active).
    #[arg(long, default_value_t = 20)]
    pub fact_checkers: u32,
    /// Claims, spread over the last 60 days.
    #[arg(long, default_value_t = 100_000)]
    pub claims: u32,
    /// Percentage of claims that are resolved with a human verdict.
    #[arg(long, default_value_t = 60)]
    pub resolved_percent: u32,
    /// Published blog articles.
    #[arg(long, default_value_t = 200)]
    pub blogs: u32,
    /// Seed for repeatable data.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// The password of every demo account.
pub const DEMO_PASSWORD: &str = "demo password 123";

const SUBJECTS: &[&str] = &[
    "The new bridge",
    "The county government",
    "A viral video",
    "The health ministry",
    "Maize prices",
    "The central bank",
    "The school calendar",
    "A local clinic",
    "The election commission",
    "Fuel prices",
    "The new tax",
    "A famous athlete",
];
const PLACES: &[&str] = &[
    "Nairobi", "Mombasa", "Kisumu", "Nakuru", "Eldoret", "Thika", "Malindi", "Kitale", "Garissa",
    "Kakamega", "Nyeri", "Machakos", "Meru", "Lamu", "Naivasha", "Kericho", "Embu", "Isiolo",
    "Voi", "Bungoma", "Kampala", "Arusha", "Dodoma", "Kigali", "Mwanza", "Jinja", "Gulu", "Moshi",
    "Tanga", "Busia",
];
const PREDICATES: &[&str] = &[
    "was built with foreign loans worth twice the official figure",
    "will double school fees next term",
    "shows flooding from last week in the capital",
    "has approved a vaccine that changes DNA",
    "rose by 40 percent in a single month",
    "printed new banknotes without parliament approval",
    "cancelled national exams for this year",
    "gives free malaria treatment to every child under five",
    "counted more votes than registered voters",
    "will fall by half before the end of the year",
    "applies to mobile money transfers below 100 shillings",
    "was banned for doping by the national federation",
];

struct Batch<T> {
    rows: Vec<T>,
}

pub async fn run(state: &AppState, opts: &DemoOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let now = Utc::now();
    let hash = state
        .passwords
        .hash(DEMO_PASSWORD.to_owned().into())
        .await?;
    let run_tag: String = Uuid::new_v4().simple().to_string()[..6].to_owned();

    // Users and fact-checkers.
    let mut users: Vec<Uuid> = Vec::new();
    let mut checkers: Vec<Uuid> = Vec::new();
    let total_users = opts.users + opts.fact_checkers;
    let mut user_rows = Vec::with_capacity(total_users as usize);
    for i in 0..total_users {
        let id = Uuid::new_v4();
        let checker = i >= opts.users;
        if checker {
            checkers.push(id)
        } else {
            users.push(id)
        }
        let name = if checker {
            format!("checker_{run_tag}_{i}")
        } else {
            format!("user_{run_tag}_{i}")
        };
        let created = now - Duration::minutes(rng.random_range(0..90 * 24 * 60));
        user_rows.push((
            id,
            name,
            if checker { "fact_checker" } else { "user" },
            created,
        ));
    }
    for chunk in (Batch { rows: user_rows }).rows.chunks(500) {
        db_write!(&state.db, "demo.users", "INSERT INTO users ...", |pool| {
            let mut qb = sqlx::QueryBuilder::new(
                "INSERT INTO users (id, email, username, display_name, bio, password_hash, role, status, created_at, updated_at) ",
            );
            qb.push_values(chunk, |mut b, (id, name, role, created)| {
                b.push_bind(*id)
                    .push_bind(format!("{name}@demo.hakikisha.test"))
                    .push_bind(name.clone())
                    .push_bind(name.replace('_', " "))
                    .push_bind("")
                    .push_bind(hash.clone())
                    .push_bind(*role)
                    .push_bind("active")
                    .push_bind(*created)
                    .push_bind(*created);
            });
            qb.build().execute(pool).await.map(drop)
        })?;
    }
    tracing::info!(
        users = total_users,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "demo users inserted"
    );

    // Claims (and verdicts for the resolved ones).
    let categories = [
        Category::Politics,
        Category::Health,
        Category::Economy,
        Category::Education,
        Category::Environment,
        Category::Technology,
        Category::Security,
        Category::Entertainment,
        Category::Sports,
        Category::Other,
    ];
    let labels = [
        Label::True,
        Label::False,
        Label::Misleading,
        Label::Satire,
        Label::NeedsContext,
        Label::Unverifiable,
    ];
    let mut remaining = opts.claims;
    let mut resolved_total = 0u64;
    while remaining > 0 {
        let n = remaining.min(1000);
        remaining -= n;
        let mut claims = Vec::with_capacity(n as usize);
        let mut verdicts = Vec::new();
        for _ in 0..n {
            let id = Uuid::new_v4();
            let text = format!(
                "{} in {} {} (post {})",
                SUBJECTS.choose(&mut rng).copied().unwrap_or("A claim"),
                PLACES.choose(&mut rng).copied().unwrap_or("Nairobi"),
                PREDICATES.choose(&mut rng).copied().unwrap_or("is true"),
                rng.random_range(1..5000)
            );
            let created: DateTime<Utc> =
                now - Duration::seconds(rng.random_range(60..60 * 24 * 3600));
            let resolved = rng.random_range(0..100) < opts.resolved_percent && !checkers.is_empty();
            let status = if resolved {
                "resolved"
            } else {
                ["pending", "human_review", "rejected"][rng.random_range(0..3)]
            };
            let reviewer = checkers.choose(&mut rng).copied();
            let resolved_at = resolved.then(|| {
                created + Duration::minutes(rng.random_range(5..3 * 24 * 60)).min(now - created)
            });
            let submitter = users.choose(&mut rng).copied();
            let category = categories[rng.random_range(0..categories.len())];
            let views: i64 = if resolved {
                rng.random_range(0..5000)
            } else {
                0
            };
            if resolved {
                let label = labels[rng.random_range(0..labels.len())];
                verdicts.push((id, label, reviewer, resolved_at.unwrap_or(created)));
            }
            claims.push((
                id,
                submitter,
                text,
                category,
                status,
                reviewer.filter(|_| status != "pending"),
                views,
                created,
                resolved_at,
            ));
        }
        resolved_total += verdicts.len() as u64;
        db_write!(&state.db, "demo.claims", "INSERT INTO claims ...", |pool| {
            let mut tx = pool.begin().await?;
            for chunk in claims.chunks(500) {
                let mut qb = sqlx::QueryBuilder::new(
                    "INSERT INTO claims (id, submitter_id, text, text_hash, category, status, priority, assigned_to, view_count, created_at, updated_at, resolved_at) ",
                );
                qb.push_values(
                    chunk,
                    |mut b,
                     (
                        id,
                        submitter,
                        text,
                        category,
                        status,
                        reviewer,
                        views,
                        created,
                        resolved_at,
                    )| {
                        b.push_bind(*id)
                            .push_bind(*submitter)
                            .push_bind(text.clone())
                            .push_bind(text_hash(text))
                            .push_bind(category.as_str())
                            .push_bind(*status)
                            .push_bind(0i32)
                            .push_bind(*reviewer)
                            .push_bind(*views)
                            .push_bind(*created)
                            .push_bind(resolved_at.unwrap_or(*created))
                            .push_bind(*resolved_at);
                    },
                );
                qb.build().execute(&mut *tx).await?;
            }
            for chunk in verdicts.chunks(500) {
                let mut qb = sqlx::QueryBuilder::new(
                    "INSERT INTO verdicts (id, claim_id, kind, label, explanation, sources, author_id, created_at, updated_at) ",
                );
                qb.push_values(chunk, |mut b, (claim, label, author, at)| {
                    b.push_bind(Uuid::new_v4())
                        .push_bind(*claim)
                        .push_bind("human")
                        .push_bind(label.as_str())
                        .push_bind(format!(
                            "Checked against official records: the claim is {label}."
                        ))
                        .push_bind(SqlJson(vec![Source {
                            title: "Official records".into(),
                            url: "https://example.org/records".into(),
                        }]))
                        .push_bind(*author)
                        .push_bind(*at)
                        .push_bind(*at);
                });
                qb.build().execute(&mut *tx).await?;
            }
            tx.commit().await
        })?;
    }
    tracing::info!(
        claims = opts.claims,
        resolved = resolved_total,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "demo claims inserted"
    );

    // Published articles.
    let authors = if checkers.is_empty() {
        users.clone()
    } else {
        checkers.clone()
    };
    let mut blogs = Vec::new();
    for i in 0..opts.blogs {
        let title = format!(
            "How we checked: {} #{i}",
            SUBJECTS.choose(&mut rng).copied().unwrap_or("a claim")
        );
        let content = format!(
            "{} Our fact-checkers traced the claim to its source and compared it with public records. {}",
            PREDICATES.choose(&mut rng).copied().unwrap_or(""),
            "Evidence matters. ".repeat(rng.random_range(20..400))
        );
        let created = now - Duration::minutes(rng.random_range(10..60 * 24 * 60));
        blogs.push((
            Uuid::new_v4(),
            authors.choose(&mut rng).copied(),
            title,
            content,
            created,
            rng.random_range(0..20_000i64),
        ));
    }
    for chunk in blogs.chunks(200) {
        db_write!(&state.db, "demo.blogs", "INSERT INTO blogs ...", |pool| {
            let mut qb = sqlx::QueryBuilder::new(
                "INSERT INTO blogs (id, author_id, title, slug, content, excerpt, category, status, read_time_minutes, view_count, created_at, updated_at, published_at) ",
            );
            qb.push_values(
                chunk,
                |mut b, (id, author, title, content, created, views)| {
                    b.push_bind(*id)
                        .push_bind(*author)
                        .push_bind(title.clone())
                        .push_bind(format!(
                            "{}-{}",
                            crate::blogs::slugify(title),
                            &id.simple().to_string()[..8]
                        ))
                        .push_bind(content.clone())
                        .push_bind(content.chars().take(200).collect::<String>())
                        .push_bind("explainers")
                        .push_bind("published")
                        .push_bind(crate::blogs::read_time(content))
                        .push_bind(*views)
                        .push_bind(*created)
                        .push_bind(*created)
                        .push_bind(*created);
                },
            );
            qb.build().execute(pool).await.map(drop)
        })?;
    }
    let ranked = trending::recompute(&state.db, now).await?;
    tracing::info!(
        users = total_users,
        claims = opts.claims,
        resolved = resolved_total,
        blogs = opts.blogs,
        trending = ranked,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "demo data ready (password of every demo account: {DEMO_PASSWORD})"
    );
    Ok(())
}
