//! The backend side of imgate: the link protocol, the `Backend` trait, the embedded reference IM
//! backend and the router binary. Empty until the backend boundary lands (issue 4); the crate
//! exists now so the workspace layout matches ARCHITECTURE.md from the first commit.
