//! App-wide middleware, outermost first: request id + tracing span, security headers, error
//! rendering, the login form's CSRF cookie. (Sessions sit inside these; access and CSRF
//! checks wrap each route.)

pub mod errors;
pub mod login_csrf;
pub mod request_id;
pub mod security_headers;
