//! Key/value dataset and replicas. To be written.
