//! The commands' error: a message, a hint of what to do, and an exit code (2 for bad input:
//! arguments, files, configurations this release does not run; 1 for a failure while computing).
use std::fmt::Display;

/// Exit code for bad input (the same code clap uses for usage errors).
pub const BAD_INPUT: u8 = 2;
/// Exit code for a failure while computing.
pub const FAILED: u8 = 1;

#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub msg: String,
    pub hint: Option<String>,
}

pub type CliResult<T> = Result<T, CliError>;

impl CliError {
    /// Bad input (exit code 2).
    pub fn input(msg: impl Into<String>) -> Self {
        CliError {
            code: BAD_INPUT,
            msg: msg.into(),
            hint: None,
        }
    }

    /// A failure while computing (exit code 1).
    pub fn failed(msg: impl Into<String>) -> Self {
        CliError {
            code: FAILED,
            msg: msg.into(),
            hint: None,
        }
    }

    pub fn hint(mut self, h: impl Into<String>) -> Self {
        self.hint = Some(h.into());
        self
    }

    /// Prints `error: …` and `hint: …` to stderr.
    pub fn report(&self) {
        eprintln!("error: {}", self.msg);
        if let Some(h) = &self.hint {
            eprintln!("hint: {h}");
        }
    }
}

impl From<clca::Error> for CliError {
    fn from(e: clca::Error) -> Self {
        use clca::Error as E;
        let (code, hint) = match &e {
            E::InvalidArgument { .. } | E::Shape { .. } | E::DType { .. } => (
                BAD_INPUT,
                "check the flags against `clca <command> --help`".to_string(),
            ),
            E::Plan(_) => (
                BAD_INPUT,
                "change --reduction_loc / --keep_rate or the cache flags (SPEC §2.3)".to_string(),
            ),
            E::Weights(_) => (
                BAD_INPUT,
                "the file must be safetensors holding the authors' parameter names for this configuration (SPEC §1.3)"
                    .to_string(),
            ),
            E::Io(_) => (BAD_INPUT, "check the path".to_string()),
            E::Unsupported { .. } => (
                BAD_INPUT,
                "the message names what this release supports instead".to_string(),
            ),
            E::LibraryMissing { .. } => (
                BAD_INPUT,
                "no NVIDIA driver here: use --device cpu (or --device shim to run the CUDA sources on the CPU)"
                    .to_string(),
            ),
            E::Cuda(_) | E::HostShim { .. } | E::UnknownKernel(_) => (
                FAILED,
                "a kernel or the CUDA runtime failed: retry with --device cpu and report the message".to_string(),
            ),
            E::LaunchLimit { .. } | E::Overflow { .. } => (
                FAILED,
                "the problem is beyond a kernel limit: lower --batch or the input size".to_string(),
            ),
            E::Alloc { .. } => (
                FAILED,
                "not enough memory for this model and batch: lower --batch or the input size".to_string(),
            ),
        };
        CliError {
            code,
            msg: e.to_string(),
            hint: Some(hint),
        }
    }
}

/// Context for library results.
pub trait Context<T> {
    /// Prefixes the message with `what` ("reading weights W: …").
    fn ctx(self, what: impl Display) -> CliResult<T>;
    /// Replaces the hint.
    fn hint(self, h: impl Into<String>) -> CliResult<T>;
}

impl<T, E: Into<CliError>> Context<T> for Result<T, E> {
    fn ctx(self, what: impl Display) -> CliResult<T> {
        self.map_err(|e| {
            let mut e: CliError = e.into();
            e.msg = format!("{what}: {}", e.msg);
            e
        })
    }
    fn hint(self, h: impl Into<String>) -> CliResult<T> {
        self.map_err(|e| e.into().hint(h))
    }
}
