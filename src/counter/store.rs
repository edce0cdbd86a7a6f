//! PostgreSQL store (side runtime). To be written.
