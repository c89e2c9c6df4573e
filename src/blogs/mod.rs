//! Blog articles by fact-checkers and admins: draft -> published -> archived, unique slugs,
//! excerpts and read time; the public reads published ones (list, trending, search, by slug).

use axum::{extract::State, http::StatusCode, response::Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    accounts::{Role, User, text_enum},
    cache::{Conditional, Namespace, Rendered, Scope, Visibility},
    claims::{
        routes::{LimitParams, search_query},
        store::{ViewTable, fts5_query},
    },
    db::{self, Backend, Db},
    db_read, db_write,
    error::{ApiError, ApiResult, Problem},
    http::{
        auth::{MaybeUser, Reviewer},
        extract::{Json, Path, Query},
    },
    pagination::{Cursor, Page, PageParams},
    state::AppState,
    validate::{self, Validator},
};

text_enum!(
    /// Publication state of an article.
    BlogStatus { Draft = "draft", Published = "published", Archived = "archived" }
);

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, ToSchema, sqlx::FromRow)]
pub struct Blog {
    pub id: Uuid,
    pub author_id: Option<Uuid>,
    pub title: String,
    pub slug: String,
    pub content: String,
    pub excerpt: String,
    pub category: Option<String>,
    #[sqlx(try_from = "String")]
    pub status: BlogStatus,
    pub read_time_minutes: i32,
    pub view_count: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub published_at: Option<DateTime<Utc>>,
}

macro_rules! blog_columns {
    () => {
        "id, author_id, title, slug, content, excerpt, category, status, read_time_minutes, view_count, created_at, updated_at, published_at"
    };
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(mine))
        .routes(routes!(trending))
        .routes(routes!(search))
        .routes(routes!(by_slug, update, delete))
        .routes(routes!(publish))
        .routes(routes!(archive))
}

/// `"Hello, World!"` -> `"hello-world"`; at most 80 characters.
pub fn slugify(title: &str) -> String {
    let mut slug = String::new();
    for c in title.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
        if slug.len() >= 80 {
            break;
        }
    }
    let slug = slug.trim_end_matches('-').to_owned();
    if slug.is_empty() {
        "article".into()
    } else {
        slug
    }
}

/// Minutes at 200 words per minute, at least 1.
pub fn read_time(content: &str) -> i32 {
    (content.split_whitespace().count().div_ceil(200)).max(1) as i32
}

fn excerpt_of(content: &str) -> String {
    let text: String = content.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.chars().count() <= 200 {
        return text;
    }
    let cut: String = text.chars().take(200).collect();
    format!(
        "{}...",
        cut.rsplit_once(' ').map(|(a, _)| a).unwrap_or(&cut)
    )
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBlog {
    pub title: String,
    pub content: String,
    pub category: Option<String>,
    /// Defaults to the first 200 characters of the content.
    pub excerpt: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateBlog {
    pub title: Option<String>,
    pub content: Option<String>,
    pub category: Option<String>,
    pub excerpt: Option<String>,
}

fn validate_fields(
    title: &str,
    content: &str,
    category: Option<&str>,
    excerpt: &str,
) -> ApiResult<()> {
    let mut v = Validator::new();
    v.add("title", validate::text(title, 3, 200));
    v.add("content", validate::text(content, 20, 100_000));
    v.add("excerpt", validate::text(excerpt, 0, 500));
    if let Some(c) = category {
        v.add("category", validate::text(c, 1, 50));
    }
    v.finish()
}

async fn get_by_id(db: &Db, id: Uuid) -> Result<Option<Blog>, sqlx::Error> {
    const SQL: &str = concat!("SELECT ", blog_columns!(), " FROM blogs WHERE id = $1");
    db_write!(db, "blogs.by_id", SQL, |pool| sqlx::query_as::<_, Blog>(
        SQL
    )
    .bind(id)
    .fetch_optional(pool)
    .await)
}

fn may_edit(blog: &Blog, user: &User) -> bool {
    user.role == Role::Admin || blog.author_id == Some(user.id)
}

/// Any article write may change the public lists, so it drops the whole namespace (one
/// generation bump, shared by every instance).
async fn forget_cached(state: &AppState) {
    state.cache.invalidate_namespace(Namespace::Blogs).await;
}

/// Write a draft article (fact-checkers and admins).
#[utoipa::path(post, path = "/api/v1/blogs", tag = "blogs", security(("bearer" = [])),
    request_body = CreateBlog,
    responses((status = 201, body = Blog), (status = 403, body = Problem), (status = 422, body = Problem)))]
async fn create(
    State(state): State<AppState>,
    Reviewer(author): Reviewer,
    Json(req): Json<CreateBlog>,
) -> ApiResult<(StatusCode, Json<Blog>)> {
    const SQL: &str = concat!(
        "INSERT INTO blogs (id, author_id, title, slug, content, excerpt, category, status, read_time_minutes, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'draft', $8, $9, $9) RETURNING ",
        blog_columns!()
    );
    let title = req.title.trim().to_owned();
    let excerpt = req
        .excerpt
        .map(|e| e.trim().to_owned())
        .unwrap_or_else(|| excerpt_of(&req.content));
    let category = req
        .category
        .map(|c| c.trim().to_lowercase())
        .filter(|c| !c.is_empty());
    validate_fields(&title, &req.content, category.as_deref(), &excerpt)?;
    let base = slugify(&title);
    let now = Utc::now();
    // Unique slugs: on a collision try `-2`, `-3`, ... then a random suffix.
    for attempt in 1..=20u32 {
        let slug = match attempt {
            1 => base.clone(),
            20 => format!("{base}-{}", &Uuid::new_v4().simple().to_string()[..8]),
            n => format!("{base}-{n}"),
        };
        let result = db_write!(&state.db, "blogs.insert", SQL, |pool| {
            sqlx::query_as::<_, Blog>(SQL)
                .bind(Uuid::new_v4())
                .bind(author.id)
                .bind(&title)
                .bind(&slug)
                .bind(&req.content)
                .bind(&excerpt)
                .bind(category.as_deref())
                .bind(read_time(&req.content))
                .bind(now)
                .fetch_one(pool)
                .await
        });
        match result {
            Ok(blog) => {
                forget_cached(&state).await;
                return Ok((StatusCode::CREATED, Json(blog)));
            }
            Err(e) if db::is_unique_violation(&e) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::Conflict(
        "could not find a free slug for this title".into(),
    ))
}

/// Edit an article (its author or an admin). The slug stays stable.
#[utoipa::path(patch, path = "/api/v1/blogs/{id}", tag = "blogs", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body = UpdateBlog,
    responses((status = 200, body = Blog), (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn update(
    State(state): State<AppState>,
    Reviewer(user): Reviewer,
    Path(id): Path<Uuid>,
    Json(req): Json<UpdateBlog>,
) -> ApiResult<Json<Blog>> {
    const SQL: &str = concat!(
        "UPDATE blogs SET title = $2, content = $3, excerpt = $4, category = $5, read_time_minutes = $6, updated_at = $7 WHERE id = $1 RETURNING ",
        blog_columns!()
    );
    let blog = get_by_id(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::not_found("article"))?;
    if !may_edit(&blog, &user) {
        return Err(ApiError::not_found("article"));
    }
    let title = req.title.map(|t| t.trim().to_owned()).unwrap_or(blog.title);
    let content_changed = req.content.is_some();
    let content = req.content.unwrap_or(blog.content);
    let excerpt = match (req.excerpt, content_changed) {
        (Some(e), _) => e.trim().to_owned(),
        (None, true) => excerpt_of(&content),
        (None, false) => blog.excerpt,
    };
    let category = match req.category {
        Some(c) => Some(c.trim().to_lowercase()).filter(|c| !c.is_empty()),
        None => blog.category,
    };
    validate_fields(&title, &content, category.as_deref(), &excerpt)?;
    let updated = db_write!(&state.db, "blogs.update", SQL, |pool| {
        sqlx::query_as::<_, Blog>(SQL)
            .bind(id)
            .bind(&title)
            .bind(&content)
            .bind(&excerpt)
            .bind(category.as_deref())
            .bind(read_time(&content))
            .bind(Utc::now())
            .fetch_optional(pool)
            .await
    })?;
    forget_cached(&state).await;
    updated
        .map(Json)
        .ok_or_else(|| ApiError::not_found("article"))
}

/// Delete an article (its author or an admin).
#[utoipa::path(delete, path = "/api/v1/blogs/{id}", tag = "blogs", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 204, description = "Deleted"), (status = 404, body = Problem)))]
async fn delete(
    State(state): State<AppState>,
    Reviewer(user): Reviewer,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    const SQL: &str = "DELETE FROM blogs WHERE id = $1";
    let blog = get_by_id(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::not_found("article"))?;
    if !may_edit(&blog, &user) {
        return Err(ApiError::not_found("article"));
    }
    db_write!(&state.db, "blogs.delete", SQL, |pool| sqlx::query(SQL)
        .bind(id)
        .execute(pool)
        .await
        .map(drop))?;
    forget_cached(&state).await;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_status(
    state: &AppState,
    user: &User,
    id: Uuid,
    from: &[BlogStatus],
    to: BlogStatus,
) -> ApiResult<Json<Blog>> {
    const SQL: &str = concat!(
        "UPDATE blogs SET status = $3, published_at = COALESCE(published_at, $4), updated_at = $4 WHERE id = $1 AND status = $2 RETURNING ",
        blog_columns!()
    );
    let blog = get_by_id(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::not_found("article"))?;
    if !may_edit(&blog, user) {
        return Err(ApiError::not_found("article"));
    }
    if !from.contains(&blog.status) {
        return Err(ApiError::Conflict(format!(
            "an article cannot go from {} to {to}",
            blog.status
        )));
    }
    let published_at = (to == BlogStatus::Published).then(Utc::now);
    let updated = db_write!(&state.db, "blogs.set_status", SQL, |pool| {
        sqlx::query_as::<_, Blog>(SQL)
            .bind(id)
            .bind(blog.status.as_str())
            .bind(to.as_str())
            .bind(published_at.unwrap_or_else(Utc::now))
            .fetch_optional(pool)
            .await
    })?;
    forget_cached(state).await;
    updated
        .map(Json)
        .ok_or_else(|| ApiError::Conflict("the article changed meanwhile; reload and retry".into()))
}

/// Publish a draft (or re-publish an archived article).
#[utoipa::path(post, path = "/api/v1/blogs/{id}/publish", tag = "blogs", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Blog), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn publish(
    State(state): State<AppState>,
    Reviewer(user): Reviewer,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Blog>> {
    set_status(
        &state,
        &user,
        id,
        &[BlogStatus::Draft, BlogStatus::Archived],
        BlogStatus::Published,
    )
    .await
}

/// Archive a published article (it leaves the public lists).
#[utoipa::path(post, path = "/api/v1/blogs/{id}/archive", tag = "blogs", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Blog), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn archive(
    State(state): State<AppState>,
    Reviewer(user): Reviewer,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Blog>> {
    set_status(
        &state,
        &user,
        id,
        &[BlogStatus::Published],
        BlogStatus::Archived,
    )
    .await
}

/// Published articles, newest first. Cached; answers `If-None-Match`.
#[utoipa::path(get, path = "/api/v1/blogs", tag = "blogs",
    params(PageParams),
    responses((status = 200, body = Page<Blog>), (status = 304, description = "Not modified")))]
async fn list(
    State(state): State<AppState>,
    conditional: Conditional,
    Query(p): Query<PageParams>,
) -> ApiResult<Response> {
    const SQL: &str = concat!(
        "SELECT ",
        blog_columns!(),
        " FROM blogs WHERE status = 'published'
           AND ($1 IS NULL OR published_at < $1 OR (published_at = $1 AND id < $2))
         ORDER BY published_at DESC, id DESC LIMIT $3"
    );
    let key = format!(
        "list:{}:{}",
        p.limit.unwrap_or(0),
        p.cursor.as_deref().unwrap_or("")
    );
    let (limit, cursor) = p.parse()?;
    let page = state
        .cache
        .get_or_load(
            Namespace::Blogs,
            Scope::Public,
            &key,
            state.cache.ttls().blogs,
            || async {
                let rows = db_read!(&state.db, "blogs.list", SQL, |pool| {
                    sqlx::query_as::<_, Blog>(SQL)
                        .bind(cursor.map(|c| c.created_at))
                        .bind(cursor.map(|c| c.id))
                        .bind(i64::from(limit) + 1)
                        .fetch_all(pool)
                        .await
                })?;
                Rendered::new(&Page::from_rows(rows, limit, |b| Cursor {
                    created_at: b.published_at.unwrap_or(b.created_at),
                    id: b.id,
                }))
            },
        )
        .await?;
    Ok(conditional.respond_rendered(&page.value, page.public()))
}

/// The signed-in author's articles in every state, newest first.
#[utoipa::path(get, path = "/api/v1/blogs/mine", tag = "blogs", security(("bearer" = [])),
    params(PageParams), responses((status = 200, body = Page<Blog>), (status = 403, body = Problem)))]
async fn mine(
    State(state): State<AppState>,
    Reviewer(user): Reviewer,
    Query(p): Query<PageParams>,
) -> ApiResult<Json<Page<Blog>>> {
    const SQL: &str = concat!(
        "SELECT ",
        blog_columns!(),
        " FROM blogs WHERE author_id = $1
           AND ($2 IS NULL OR created_at < $2 OR (created_at = $2 AND id < $3))
         ORDER BY created_at DESC, id DESC LIMIT $4"
    );
    let (limit, cursor) = p.parse()?;
    let rows = db_write!(&state.db, "blogs.mine", SQL, |pool| {
        sqlx::query_as::<_, Blog>(SQL)
            .bind(user.id)
            .bind(cursor.map(|c| c.created_at))
            .bind(cursor.map(|c| c.id))
            .bind(i64::from(limit) + 1)
            .fetch_all(pool)
            .await
    })?;
    Ok(Json(Page::from_rows(rows, limit, |b| Cursor {
        created_at: b.created_at,
        id: b.id,
    })))
}

/// Most-read published articles. Cached (with the trending TTL, as view counts move);
/// answers `If-None-Match`.
#[utoipa::path(get, path = "/api/v1/blogs/trending", tag = "blogs",
    params(LimitParams),
    responses((status = 200, body = Page<Blog>), (status = 304, description = "Not modified")))]
async fn trending(
    State(state): State<AppState>,
    conditional: Conditional,
    Query(p): Query<LimitParams>,
) -> ApiResult<Response> {
    const SQL: &str = concat!(
        "SELECT ",
        blog_columns!(),
        " FROM blogs WHERE status = 'published' ORDER BY view_count DESC, id DESC LIMIT $1"
    );
    let limit = p.limit()?;
    let page = state
        .cache
        .get_or_load(
            Namespace::Blogs,
            Scope::Public,
            &format!("trending:{limit}"),
            state.cache.ttls().trending,
            || async {
                let items = db_read!(&state.db, "blogs.trending", SQL, |pool| {
                    sqlx::query_as::<_, Blog>(SQL)
                        .bind(i64::from(limit))
                        .fetch_all(pool)
                        .await
                })?;
                Rendered::new(&Page {
                    items,
                    next_cursor: None,
                })
            },
        )
        .await?;
    Ok(conditional.respond_rendered(&page.value, page.public()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct BlogSearch {
    pub q: String,
    pub limit: Option<u32>,
}

/// Full-text search over published articles (title and content), best match first.
#[utoipa::path(get, path = "/api/v1/blogs/search", tag = "blogs",
    params(BlogSearch), responses((status = 200, body = Page<Blog>), (status = 422, body = Problem)))]
async fn search(
    State(state): State<AppState>,
    Query(p): Query<BlogSearch>,
) -> ApiResult<Json<Page<Blog>>> {
    const PG: &str = concat!(
        "SELECT ", blog_columns!(), " FROM blogs, websearch_to_tsquery('english', $1) query
         WHERE status = 'published' AND search @@ query ORDER BY ts_rank(search, query) DESC, id DESC LIMIT $2"
    );
    const SQLITE: &str = "SELECT b.id, b.author_id, b.title, b.slug, b.content, b.excerpt, b.category, b.status, b.read_time_minutes,
            b.view_count, b.created_at, b.updated_at, b.published_at
         FROM blogs_fts f JOIN blogs b ON b.rowid = f.rowid
         WHERE blogs_fts MATCH $1 AND b.status = 'published' ORDER BY bm25(blogs_fts), b.id DESC LIMIT $2";
    let q = search_query(&p.q)?;
    let limit = LimitParams { limit: p.limit }.limit()?;
    let (sql, query) = match state.db.backend() {
        Backend::Sqlite(_) => (SQLITE, fts5_query(q)),
        Backend::Postgres(_) => (PG, q.to_owned()),
    };
    if query.is_empty() {
        return Ok(Json(Page {
            items: Vec::new(),
            next_cursor: None,
        }));
    }
    let items = db_read!(&state.db, "blogs.search", sql, |pool| {
        sqlx::query_as::<_, Blog>(sql)
            .bind(&query)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
    })?;
    Ok(Json(Page {
        items,
        next_cursor: None,
    }))
}

/// An article by slug or id, from the primary (a cache fill must not read a lagging replica
/// right after a write).
async fn find(db: &Db, key: &str) -> Result<Option<Blog>, sqlx::Error> {
    const SQL: &str = concat!("SELECT ", blog_columns!(), " FROM blogs WHERE slug = $1");
    match key.parse::<Uuid>() {
        Ok(id) => get_by_id(db, id).await,
        Err(_) => db_write!(db, "blogs.by_slug", SQL, |pool| {
            sqlx::query_as::<_, Blog>(SQL)
                .bind(key)
                .fetch_optional(pool)
                .await
        }),
    }
}

/// What the cache holds for a published article: its id (to count the view) and the article,
/// serialized once. An entry an earlier release wrote to Redis (the article itself) does not
/// decode as this and is loaded afresh, and the reverse.
#[derive(serde::Serialize, Deserialize)]
struct PublishedBlog {
    id: Uuid,
    body: Rendered,
}

/// One article by slug (or id). Published articles are public and cached; drafts and archived
/// articles are visible to their author and admins only, never cached. The path segment is
/// shared with the id-based write routes, hence its name.
#[utoipa::path(get, path = "/api/v1/blogs/{id}", tag = "blogs",
    params(("id" = String, Path, description = "The article's slug, or its UUID")),
    responses((status = 200, body = Blog), (status = 304, description = "Not modified"), (status = 404, body = Problem)))]
async fn by_slug(
    State(state): State<AppState>,
    MaybeUser(user): MaybeUser,
    conditional: Conditional,
    Path(key): Path<String>,
) -> ApiResult<Response> {
    let published = state
        .cache
        .get_or_load(
            Namespace::Blogs,
            Scope::Public,
            &format!("article:{key}"),
            state.cache.ttls().blogs,
            || async {
                let blog = find(&state.db, &key)
                    .await?
                    .filter(|b| b.status == BlogStatus::Published)
                    .ok_or_else(|| ApiError::not_found("article"))?;
                Ok(PublishedBlog {
                    id: blog.id,
                    body: Rendered::new(&blog)?,
                })
            },
        )
        .await;
    match published {
        Ok(blog) => {
            state.views.record(ViewTable::Blogs, blog.value.id);
            return Ok(conditional.respond_rendered(&blog.value.body, blog.public()));
        }
        // Maybe a draft or archived article of this user.
        Err(ApiError::NotFound(_)) if user.is_some() => {}
        Err(e) => return Err(e),
    }
    let blog = find(&state.db, &key)
        .await?
        .filter(|b| user.as_ref().is_some_and(|u| may_edit(b, u)))
        .ok_or_else(|| ApiError::not_found("article"))?;
    if blog.status == BlogStatus::Published {
        state.views.record(ViewTable::Blogs, blog.id);
    }
    Ok(conditional.respond(&blog, Visibility::Private))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_and_read_times() {
        assert_eq!(slugify("Hello, World! 2026"), "hello-world-2026");
        assert_eq!(slugify("¿¡!!"), "article");
        assert_eq!(read_time("word "), 1);
        assert_eq!(read_time(&"word ".repeat(401)), 3);
        assert!(excerpt_of(&"lorem ipsum ".repeat(100)).ends_with("..."));
    }
}
