//! EC2's errors in Kiln's words.

use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};

use crate::cloud::{CloudError, ErrorKind};

pub fn from_sdk<E, R>(action: &str, err: SdkError<E, R>) -> CloudError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    match &err {
        SdkError::TimeoutError(_) => {
            CloudError::new(ErrorKind::Unavailable, format!("EC2 {action} timed out"))
        }
        SdkError::DispatchFailure(e) => CloudError::new(
            ErrorKind::Unavailable,
            format!(
                "EC2 {action} could not be sent: {}",
                e.as_connector_error()
                    .map(describe_dispatch)
                    .unwrap_or_else(|| "no connection".into())
            ),
        ),
        SdkError::ConstructionFailure(_) => CloudError::new(
            ErrorKind::InvalidInput,
            format!("EC2 {action} request could not be built: {err}"),
        ),
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("Unknown");
            let message = service.err().message().unwrap_or("no message");
            CloudError::new(
                kind_of(code),
                format!("EC2 {action} failed: {code}: {message}"),
            )
        }
        SdkError::ResponseError(_) => CloudError::new(
            ErrorKind::Unavailable,
            format!("EC2 {action} gave a response Kiln could not read"),
        ),
        _ => CloudError::new(ErrorKind::Other, format!("EC2 {action} failed: {err}")),
    }
}

fn describe_dispatch(e: &impl std::error::Error) -> String {
    let mut s = format!("{e}");
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// EC2 error codes (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html).
pub fn kind_of(code: &str) -> ErrorKind {
    match code {
        "RequestLimitExceeded" | "Throttling" | "ThrottlingException" => ErrorKind::Throttled,
        "InternalError" | "ServiceUnavailable" | "Unavailable" | "InternalFailure" => {
            ErrorKind::Unavailable
        }
        "InsufficientInstanceCapacity" | "InsufficientCapacity" | "InsufficientHostCapacity" => {
            ErrorKind::InsufficientCapacity
        }
        "IdempotentParameterMismatch" => ErrorKind::IdempotencyMismatch,
        "AuthFailure"
        | "UnauthorizedOperation"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "Blocked"
        | "OptInRequired" => ErrorKind::Unauthorized,
        c if c.ends_with(".NotFound")
            || c.ends_with(".Unavailable") && c.starts_with("InvalidAMIID") =>
        {
            ErrorKind::NotFound
        }
        c if c.starts_with("Invalid")
            || c.starts_with("Missing")
            || c == "ValidationError"
            || c == "UnknownParameter" =>
        {
            ErrorKind::InvalidInput
        }
        _ => ErrorKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_kinds() {
        assert_eq!(kind_of("RequestLimitExceeded"), ErrorKind::Throttled);
        assert_eq!(kind_of("InvalidAMIID.NotFound"), ErrorKind::NotFound);
        assert_eq!(kind_of("InvalidInstanceID.NotFound"), ErrorKind::NotFound);
        assert_eq!(kind_of("InvalidAMIID.Malformed"), ErrorKind::InvalidInput);
        assert_eq!(
            kind_of("InsufficientInstanceCapacity"),
            ErrorKind::InsufficientCapacity
        );
        assert_eq!(kind_of("UnauthorizedOperation"), ErrorKind::Unauthorized);
        assert_eq!(
            kind_of("IdempotentParameterMismatch"),
            ErrorKind::IdempotencyMismatch
        );
        assert_eq!(kind_of("InternalError"), ErrorKind::Unavailable);
    }
}
