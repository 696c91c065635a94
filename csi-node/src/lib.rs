pub mod fs;
pub mod identity;
pub mod node;
pub mod observe;
pub mod pool_executor;
pub mod registration;
pub mod serve;
pub mod status;
