//! Embedded PostgreSQL cluster. To be written.
