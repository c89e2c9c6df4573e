//! Field validation that collects every problem of a request into one 422 response.

use crate::error::{ApiError, FieldError};

/// Accumulates field errors; `finish` turns them into `ApiError::Validation`.
#[derive(Default)]
pub struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn check(&mut self, ok: bool, field: &str, message: &str) -> &mut Self {
        if !ok {
            self.errors.push(FieldError::new(field, message));
        }
        self
    }

    pub fn add(&mut self, field: &str, result: Result<(), String>) -> &mut Self {
        if let Err(message) = result {
            self.errors.push(FieldError::new(field, message));
        }
        self
    }

    pub fn finish(&mut self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(std::mem::take(&mut self.errors)))
        }
    }
}

pub fn email(value: &str) -> Result<(), String> {
    let bad = || Err("must be a valid email address".to_owned());
    if value.len() > 254 || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad();
    }
    let Some((local, domain)) = value.rsplit_once('@') else {
        return bad();
    };
    if local.is_empty()
        || local.len() > 64
        || local.contains('@')
        || domain.len() < 3
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
        || domain.contains("..")
        || !domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    {
        return bad();
    }
    Ok(())
}

pub fn username(value: &str) -> Result<(), String> {
    let ok = (3..=30).contains(&value.len())
        && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err("must be 3-30 characters: letters, digits and underscore".into())
    }
}

/// At least 10 characters, at most 128, mixing letters with digits or symbols, and not
/// containing the username or the email's local part.
pub fn password(value: &str, identities: &[&str]) -> Result<(), String> {
    let len = value.chars().count();
    if len < 10 {
        return Err("must be at least 10 characters".into());
    }
    if len > 128 {
        return Err("must be at most 128 characters".into());
    }
    let letters = value.chars().any(|c| c.is_alphabetic());
    let others = value.chars().any(|c| !c.is_alphabetic());
    if !letters || !others {
        return Err("must mix letters with digits or symbols".into());
    }
    let lower = value.to_lowercase();
    if identities
        .iter()
        .any(|id| id.len() >= 3 && lower.contains(&id.to_lowercase()))
    {
        return Err("must not contain your username or email".into());
    }
    Ok(())
}

pub fn text(value: &str, min: usize, max: usize) -> Result<(), String> {
    let len = value.trim().chars().count();
    if len < min {
        return Err(if min == 1 {
            "must not be empty".into()
        } else {
            format!("must be at least {min} characters")
        });
    }
    if value.chars().count() > max {
        return Err(format!("must be at most {max} characters"));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\r' && c != '\t')
    {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

/// An absolute http(s) URL without whitespace, at most 2048 characters.
pub fn url(value: &str) -> Result<(), String> {
    let rest = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"));
    match rest {
        Some(rest)
            if value.len() <= 2048
                && !rest.is_empty()
                && !rest.starts_with('/')
                && !value.chars().any(|c| c.is_whitespace() || c.is_control()) =>
        {
            Ok(())
        }
        _ => Err("must be an absolute http or https URL".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert!(email("amina@example.co.ke").is_ok());
        for bad in [
            "",
            "amina",
            "@example.com",
            "amina@",
            "a b@example.com",
            "amina@example",
            "a@.com",
            "a@b..com",
        ] {
            assert!(email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords() {
        assert!(password("correct horse 42", &["amina"]).is_ok());
        assert!(password("short1", &[]).is_err());
        assert!(password("onlyletterslong", &[]).is_err());
        assert!(password("1234567890123", &[]).is_err());
        assert!(password("amina-is-the-best-1", &["amina"]).is_err());
    }

    #[test]
    fn urls() {
        assert!(url("https://example.com/a?b=c").is_ok());
        for bad in [
            "ftp://x.com",
            "javascript:alert(1)",
            "https://",
            "https:///x",
            "https://a b.com",
        ] {
            assert!(url(bad).is_err(), "{bad}");
        }
    }
}
