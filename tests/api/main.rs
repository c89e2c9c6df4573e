//! One integration binary: the real app on port 0, spoken to over HTTP.

mod helpers;

mod accounts;
mod ai;
mod authz;
mod bad_input;
mod blogs;
mod cache;
mod claims;
mod dashboard;
mod jobs;
mod ops;
mod ratelimit;
mod usage;
mod vault;
