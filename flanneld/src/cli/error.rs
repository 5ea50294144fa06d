//! What a rejected command line says.

/// Why the command line was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    /// `-h`/`--help` was given.
    #[error("help requested")]
    Help,
    /// An unknown flag.
    #[error("flag provided but not defined: -{0}")]
    Unknown(String),
    /// A non-boolean flag without a value.
    #[error("flag needs an argument: -{0}")]
    MissingValue(String),
    /// A value that does not parse for its flag.
    #[error("invalid value {value:?} for flag -{flag}: {expected}")]
    BadValue {
        /// The flag.
        flag: String,
        /// The value given.
        value: String,
        /// What would be valid.
        expected: String,
    },
    /// A stray positional argument.
    #[error("unexpected argument {0:?} (flags take values as -flag=value)")]
    Positional(String),
    /// Anything else clap rejects (its own message).
    #[error("{0}")]
    Other(String),
}
