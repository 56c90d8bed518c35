//! Fleet actions as users start them (pages and API alike): validate, write the database and
//! enqueue the tasks in one transaction, audit — never call the cloud.

pub mod adopt_image;
pub mod builders;
pub mod deregister_image;
pub mod image_cleanup;
pub mod images;
pub mod launch_servers;
pub mod reconciler;
pub mod servers;
pub mod terminate_server;
pub mod terminations;
