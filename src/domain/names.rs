use super::ValidationError;

/// A login name: 1..=64 characters of `a-z A-Z 0-9 . _ -`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserName(String);

impl UserName {
    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        let name = input.trim();
        if name.is_empty() {
            return Err(ValidationError::new("Enter a user name."));
        }
        if name.chars().count() > 64 {
            return Err(ValidationError::new(
                "A user name has at most 64 characters.",
            ));
        }
        let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if !name.chars().all(valid_char) || !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(ValidationError::new(
                "A user name uses only letters, digits, '.', '_' and '-', and starts with a letter or digit.",
            ));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A label for an API token: 1..=100 printable characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenName(String);

impl TokenName {
    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        let name = input.trim();
        if name.is_empty() {
            return Err(ValidationError::new(
                "Give the token a name, e.g. \"ci-metrics\".",
            ));
        }
        if name.chars().count() > 100 {
            return Err(ValidationError::new(
                "A token name has at most 100 characters.",
            ));
        }
        if name.chars().any(char::is_control) {
            return Err(ValidationError::new(
                "A token name cannot contain control characters.",
            ));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names() {
        assert_eq!(UserName::parse(" alice ").unwrap().as_str(), "alice");
        assert!(UserName::parse("ops.team-1_b").is_ok());
        assert!(UserName::parse("").is_err());
        assert!(UserName::parse("-alice").is_err());
        assert!(UserName::parse("al ice").is_err());
        assert!(UserName::parse("ålice").is_err());
        assert!(UserName::parse(&"a".repeat(65)).is_err());
    }

    #[test]
    fn token_names() {
        assert!(TokenName::parse("ci metrics").is_ok());
        assert!(TokenName::parse("  ").is_err());
        assert!(TokenName::parse("a\nb").is_err());
    }
}
