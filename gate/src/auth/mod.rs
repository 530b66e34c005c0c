//! Token verification (dev and JWT).
