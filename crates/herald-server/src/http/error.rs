//! The one error type of the HTTP API: a status, a stable code and a client-safe message,
//! rendered as `{"success": false, "error": {"code", "message"}}`.

use axum::Json;
use axum::response::{IntoResponse, Response};
use herald_core::ErrorCode;
use herald_core::metrics::count_error;
use http::StatusCode;
use serde_json::json;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// Overrides the status chosen from the code.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// The status that fits an error code when there is no more specific one.
    pub fn from_code(code: ErrorCode, message: impl Into<String>) -> Self {
        let status = match code {
            ErrorCode::TokenMissing | ErrorCode::TokenInvalid | ErrorCode::TokenExpired => StatusCode::UNAUTHORIZED,
            ErrorCode::NotAuthenticated => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden | ErrorCode::MembershipRequired => StatusCode::FORBIDDEN,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::TooManyConnections | ErrorCode::BrokerUnavailable | ErrorCode::StoreUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::InvalidTopic | ErrorCode::InvalidJson | ErrorCode::InvalidPayload | ErrorCode::UnknownEvent => {
                StatusCode::BAD_REQUEST
            }
        };
        Self::new(status, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        count_error(self.code);
        let body = json!({"success": false, "error": {"code": self.code.as_str(), "message": self.message}});
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
        }
        response
    }
}
