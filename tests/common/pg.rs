//! Private PostgreSQL clusters for tests. To be written.
