//! One module per subcommand: flags parsed by clap, validated, then handed to the library.
pub mod convert;
pub mod inspect;
pub mod replay;
pub mod worker;
