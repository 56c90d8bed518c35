use super::ValidationError;

/// A new password: 12..=256 characters (ASVS 2.1.1/2.1.2). No composition rules: length is
/// what makes a password strong, and rules push people to predictable patterns.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub const MIN_CHARS: usize = 12;
    pub const MAX_CHARS: usize = 256;

    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        let chars = input.chars().count();
        if chars < Self::MIN_CHARS {
            return Err(ValidationError::new(format!(
                "A password needs at least {} characters.",
                Self::MIN_CHARS
            )));
        }
        if chars > Self::MAX_CHARS {
            return Err(ValidationError::new(format!(
                "A password has at most {} characters.",
                Self::MAX_CHARS
            )));
        }
        Ok(Self(input.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

// Never print a password, even in debug logs.
impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_limits() {
        assert!(Password::parse("short").is_err());
        assert!(Password::parse("twelve chars").is_ok());
        assert!(Password::parse(&"x".repeat(257)).is_err());
        assert_eq!(
            format!("{:?}", Password::parse("twelve chars").unwrap()),
            "Password(…)"
        );
    }
}
