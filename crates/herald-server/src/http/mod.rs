//! The HTTP API (`POST /api/publish`) and the ops endpoints.

pub mod error;
pub mod ops;
pub mod publish;

pub use error::ApiError;
