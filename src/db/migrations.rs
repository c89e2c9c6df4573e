//! Migrations embedded in the binary, one folder per backend. Never edit an applied migration;
//! add a new file and list it here.

use std::borrow::Cow;

use sqlx::{
    SqlSafeStr,
    migrate::{Migration, MigrationType, Migrator},
};

macro_rules! migrations {
    ($dir:literal: $($version:literal $name:literal),+ $(,)?) => {
        Migrator::with_migrations(vec![$(
            Migration::new(
                $version,
                Cow::Borrowed($name),
                MigrationType::Simple,
                include_str!(concat!("../../migrations/", $dir, "/", stringify!($version), "_", $name, ".sql")).into_sql_str(),
                false,
            )
        ),+])
    };
}

pub fn sqlite() -> Migrator {
    migrations!("sqlite": 1 "accounts", 2 "factcheck", 3 "vault", 4 "jobs", 5 "ai")
}

pub fn postgres() -> Migrator {
    migrations!("postgres": 1 "accounts", 2 "factcheck", 3 "vault", 4 "jobs", 5 "ai")
}
