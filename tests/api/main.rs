//! One integration binary: the real app on port 0, spoken to over HTTP.

mod helpers;

mod accounts;
mod authz;
mod bad_input;
mod blogs;
mod claims;
mod dashboard;
mod ops;
