//! The HTTP API (`POST /api/publish`), the ops endpoints and the operators' dashboard.

pub mod dashboard;
pub mod error;
pub mod openapi;
pub mod ops;
pub mod publish;

pub use error::ApiError;
