//! The API's errors: one JSON shape (`ferry_api::ErrorBody`) with a
//! stable code per status, for the operations' refusals and for the HTTP
//! layer's own.

use crate::ops::OpError;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ferry_api::{ErrorBody, ErrorDetail};
use ferry_core::spec::Problem;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub problems: Vec<Problem>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            problems: Vec::new(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    fn conflict(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    fn invalid(message: impl Into<String>, problems: Vec<Problem>) -> ApiError {
        ApiError {
            problems,
            ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
        }
    }
    fn internal(e: impl std::fmt::Display) -> ApiError {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.into(),
                message: self.message,
                problems: self.problems,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

impl From<OpError> for ApiError {
    fn from(e: OpError) -> ApiError {
        match e {
            OpError::BadRequest(m) => ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m),
            OpError::NotFound(m) => ApiError::not_found(m),
            OpError::Conflict(m) => ApiError::conflict(m),
            OpError::Invalid { message, problems } => ApiError::invalid(message, problems),
            OpError::Store(e) => ApiError::internal(e),
            OpError::Failed(m) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "failed", m),
        }
    }
}
