//! Every route of the console in one table: method, path, the least access it needs, and its
//! handler. The table both registers the routes and wraps each one with the access check, so
//! a route cannot exist without declaring who may call it; the role-matrix test walks the
//! same table.

use actix_web::http::Method;
use actix_web::middleware::from_fn;
use actix_web::web;

use super::access::{Access, enforce};
use super::{agent_api, api, assets, hooks, librato_alerts, metrics_api, pages};
use crate::domain::Role;

pub struct RouteSpec {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
}

const PUBLIC: Access = Access::Public;
const VIEWER: Access = Access::Role(Role::Viewer);
const OPERATOR: Access = Access::Role(Role::Operator);
const ADMIN: Access = Access::Role(Role::Admin);
const AGENT: Access = Access::Agent;
const SIGNED: Access = Access::Signed;

macro_rules! route_table {
    ($($method:ident $path:literal $access:ident => $handler:path;)*) => {
        /// Every route, in registration order.
        pub const ROUTES: &[RouteSpec] = &[
            $(RouteSpec { method: stringify!($method), path: $path, access: $access },)*
        ];

        pub fn register(cfg: &mut web::ServiceConfig) {
            $(
                cfg.route(
                    $path,
                    web::method(Method::$method)
                        .to($handler)
                        .wrap(from_fn(move |req, next| enforce($access, req, next))),
                );
            )*
        }
    };
}

route_table! {
    GET  "/healthz"                   PUBLIC => pages::health::healthz;
    GET  "/readyz"                    PUBLIC => pages::health::readyz;
    GET  "/metrics"                   PUBLIC => pages::health::metrics;
    GET  "/static/{path:.*}"          PUBLIC => assets::serve;
    GET  "/login"                     PUBLIC => pages::login::form;
    POST "/login"                     PUBLIC => pages::login::submit;
    POST "/logout"                    VIEWER => pages::login::logout;

    GET  "/"                          VIEWER => pages::overview::show;
    GET  "/images"                    VIEWER => pages::images::list;
    POST "/images"                    OPERATOR => pages::images::add;
    GET  "/images/cleanup"            VIEWER => pages::images::cleanup_preview;
    POST "/images/cleanup"            OPERATOR => pages::images::cleanup;
    GET  "/images/{id}"               VIEWER => pages::images::show;
    POST "/images/{id}/deregister"    OPERATOR => pages::images::deregister;
    POST "/images/{id}/release"       OPERATOR => pages::rollouts::release;
    POST "/images/{id}/rollback"      OPERATOR => pages::rollouts::rollback;
    GET  "/servers"                   VIEWER => pages::servers::list;
    POST "/servers"                   OPERATOR => pages::servers::launch;
    GET  "/servers/{id}"              VIEWER => pages::servers::show;
    POST "/servers/bulk"              OPERATOR => pages::servers::bulk;
    POST "/servers/{id}/{action}"     OPERATOR => pages::servers::act;
    GET  "/rollouts"                  VIEWER => pages::rollouts::list;
    GET  "/rollouts/{id}"             VIEWER => pages::rollouts::show;
    POST "/rollouts/{id}/{action}"    OPERATOR => pages::rollouts::control;
    POST "/freezes"                   ADMIN  => pages::rollouts::create_freeze;
    POST "/freezes/{id}/delete"       ADMIN  => pages::rollouts::delete_freeze;
    GET  "/scaling"                   VIEWER => pages::scaling::show;
    POST "/scaling"                   OPERATOR => pages::scaling::save;
    POST "/scaling/preview"           OPERATOR => pages::scaling::preview;
    POST "/scaling/{action}"          OPERATOR => pages::scaling::switch;
    GET  "/bakes"                     VIEWER => pages::bakes::list;
    POST "/bakes"                     OPERATOR => pages::bakes::start;
    POST "/bakes/recipes"             OPERATOR => pages::bakes::create_recipe;
    GET  "/bakes/recipes/{id}"        VIEWER => pages::bakes::show_recipe;
    POST "/bakes/recipes/{id}"        OPERATOR => pages::bakes::update_recipe;
    GET  "/bakes/{id}"                VIEWER => pages::bakes::show;
    POST "/bakes/{id}/cancel"         OPERATOR => pages::bakes::cancel;
    GET  "/jobs"                      VIEWER => pages::jobs::list;
    POST "/jobs"                      OPERATOR => pages::jobs::enqueue;
    POST "/jobs/retry_failed"         OPERATOR => pages::jobs::retry_failed;
    GET  "/jobs/{id}"                 VIEWER => pages::jobs::show;
    POST "/jobs/{id}/cancel"          OPERATOR => pages::jobs::cancel;
    POST "/jobs/{id}/retry"           OPERATOR => pages::jobs::retry;
    GET  "/dashboards"                VIEWER => pages::dashboards::show;
    POST "/dashboards"                OPERATOR => pages::dashboard_edit::create;
    GET  "/dashboards/series"         VIEWER => metrics_api::get_series;
    GET  "/dashboards/markers"        VIEWER => pages::dashboards::markers;
    GET  "/dashboards/{id}"           VIEWER => pages::dashboards::show_custom;
    POST "/dashboards/{id}/rename"    OPERATOR => pages::dashboard_edit::rename;
    POST "/dashboards/{id}/delete"    OPERATOR => pages::dashboard_edit::delete;
    POST "/dashboards/{id}/charts"    OPERATOR => pages::dashboard_edit::add_chart;
    GET  "/dashboards/{id}/charts/{chart}" VIEWER => pages::dashboard_edit::show_chart;
    POST "/dashboards/{id}/charts/{chart}" OPERATOR => pages::dashboard_edit::edit_chart;
    POST "/dashboards/{id}/charts/{chart}/series" OPERATOR => pages::dashboard_edit::add_series;
    POST "/dashboards/{id}/charts/{chart}/series/{n}/remove" OPERATOR => pages::dashboard_edit::remove_series;
    POST "/dashboards/{id}/charts/{chart}/delete" OPERATOR => pages::dashboard_edit::delete_chart;
    POST "/dashboards/{id}/charts/{chart}/move" OPERATOR => pages::dashboard_edit::move_chart;
    GET  "/alerts"                    VIEWER => pages::alerts::list;
    POST "/alerts"                    OPERATOR => pages::alerts::create;
    GET  "/alerts/badge"              VIEWER => pages::alerts::badge;
    POST "/alerts/preview"            OPERATOR => pages::alerts::preview;
    POST "/alerts/silences"           OPERATOR => pages::alerts::silence;
    POST "/alerts/silences/{id}/end"  OPERATOR => pages::alerts::end_silence;
    POST "/alerts/channels"           ADMIN  => pages::alerts::create_channel;
    POST "/alerts/channels/{id}/delete" ADMIN => pages::alerts::delete_channel;
    POST "/alerts/channels/{id}/test" ADMIN  => pages::alerts::test_channel;
    GET  "/alerts/{id}"               VIEWER => pages::alerts::show;
    POST "/alerts/{id}"               OPERATOR => pages::alerts::update;
    POST "/alerts/{id}/delete"        OPERATOR => pages::alerts::delete;
    POST "/alerts/{id}/ack"           OPERATOR => pages::alerts::ack;
    POST "/alerts/{id}/test"          OPERATOR => pages::alerts::test;
    GET  "/audit"                     VIEWER => pages::audit::show;

    GET  "/account"                   VIEWER => pages::account::show;
    POST "/account/password"          VIEWER => pages::account::change_password;

    GET  "/users"                     ADMIN  => pages::users::show;
    POST "/users"                     ADMIN  => pages::users::create;
    POST "/users/{id}/disable"        ADMIN  => pages::users::disable;
    POST "/users/{id}/enable"         ADMIN  => pages::users::enable;
    POST "/tokens"                    ADMIN  => pages::users::create_token;
    POST "/tokens/{id}/revoke"        ADMIN  => pages::users::revoke_token;

    GET  "/api/v1/audit"              VIEWER => api::audit::list;
    GET  "/api/v1/images"             VIEWER => api::images::list;
    POST "/api/v1/images"             OPERATOR => api::images::add;
    GET  "/api/v1/images/{id}"        VIEWER => api::images::show;
    POST "/api/v1/images/{id}/deregister" OPERATOR => api::images::deregister;
    POST "/api/v1/images/{id}/release" OPERATOR => api::rollouts::release;
    POST "/api/v1/images/{id}/rollback" OPERATOR => api::rollouts::rollback;
    GET  "/api/v1/rollouts"           VIEWER => api::rollouts::list;
    GET  "/api/v1/rollouts/{id}"      VIEWER => api::rollouts::show;
    GET  "/api/v1/rollouts/{id}/comparison" VIEWER => api::rollouts::comparison;
    POST "/api/v1/rollouts/{id}/{action}" OPERATOR => api::rollouts::control;
    GET  "/api/v1/freezes"            VIEWER => api::freezes::list;
    POST "/api/v1/freezes"            ADMIN  => api::freezes::create;
    DELETE "/api/v1/freezes/{id}"     ADMIN  => api::freezes::delete;
    GET  "/api/v1/servers"            VIEWER => api::servers::list;
    POST "/api/v1/servers"            OPERATOR => api::servers::launch;
    GET  "/api/v1/servers/{id}"       VIEWER => api::servers::show;
    POST "/api/v1/servers/{id}/{action}" OPERATOR => api::servers::act;
    GET  "/api/v1/launches/{id}"      VIEWER => api::servers::show_launch;
    GET  "/api/v1/jobs"               VIEWER => api::jobs::list;
    POST "/api/v1/jobs"               OPERATOR => api::jobs::enqueue;
    GET  "/api/v1/jobs/{id}"          VIEWER => api::jobs::show;
    GET  "/api/v1/jobs/{id}/log"      VIEWER => api::jobs::log;
    POST "/api/v1/jobs/{id}/cancel"   OPERATOR => api::jobs::cancel;
    POST "/api/v1/jobs/{id}/retry"    OPERATOR => api::jobs::retry;

    GET  "/api/v1/recipes"            VIEWER => api::bakes::list_recipes;
    POST "/api/v1/recipes"            OPERATOR => api::bakes::create_recipe;
    POST "/api/v1/recipes/{id}"       OPERATOR => api::bakes::update_recipe;
    GET  "/api/v1/bakes"              VIEWER => api::bakes::list;
    POST "/api/v1/bakes"              OPERATOR => api::bakes::start;
    GET  "/api/v1/bakes/{id}"         VIEWER => api::bakes::show;
    POST "/api/v1/bakes/{id}/cancel"  OPERATOR => api::bakes::cancel;
    POST "/hooks/github"              SIGNED => hooks::github;

    GET  "/api/v1/scaling"            VIEWER => api::scaling::show;
    PUT  "/api/v1/scaling"            OPERATOR => api::scaling::update;
    GET  "/api/v1/scaling/decisions"  VIEWER => api::scaling::decisions;
    POST "/api/v1/scaling/preview"    OPERATOR => api::scaling::preview;
    GET  "/api/v1/alerts"             VIEWER => api::alerts::list;
    POST "/api/v1/alerts"             OPERATOR => api::alerts::create;
    GET  "/api/v1/alerts/status"      VIEWER => api::alerts::status;
    POST "/api/v1/alerts/preview"     OPERATOR => api::alerts::preview;
    GET  "/api/v1/alerts/{id}"        VIEWER => api::alerts::show;
    PUT  "/api/v1/alerts/{id}"        OPERATOR => api::alerts::update;
    DELETE "/api/v1/alerts/{id}"      OPERATOR => api::alerts::delete;
    GET  "/api/v1/alerts/{id}/history" VIEWER => api::alerts::history;
    GET  "/api/v1/alerts/{id}/deliveries" VIEWER => api::alerts::deliveries;
    POST "/api/v1/alerts/{id}/ack"    OPERATOR => api::alerts::ack;
    POST "/api/v1/alerts/{id}/silence" OPERATOR => api::alerts::silence_rule;
    POST "/api/v1/alerts/{id}/test"   OPERATOR => api::alerts::test_rule;
    GET  "/api/v1/silences"           VIEWER => api::alerts::list_silences;
    POST "/api/v1/silences"           OPERATOR => api::alerts::create_silence;
    DELETE "/api/v1/silences/{id}"    OPERATOR => api::alerts::end_silence;
    GET  "/api/v1/channels"           ADMIN  => api::alerts::list_channels;
    POST "/api/v1/channels"           ADMIN  => api::alerts::create_channel;
    GET  "/api/v1/channels/{id}"      ADMIN  => api::alerts::show_channel;
    PUT  "/api/v1/channels/{id}"      ADMIN  => api::alerts::update_channel;
    DELETE "/api/v1/channels/{id}"    ADMIN  => api::alerts::delete_channel;
    POST "/api/v1/channels/{id}/test" ADMIN  => api::alerts::test_channel;

    GET  "/api/v1/series"             VIEWER => metrics_api::get_series;
    POST "/v1/metrics"                OPERATOR => metrics_api::legacy;
    POST "/v1/measurements"           OPERATOR => metrics_api::tagged;
    POST "/v1/annotations/{stream}"   OPERATOR => metrics_api::annotate;
    GET  "/v1/alerts"                 VIEWER => librato_alerts::list;
    POST "/v1/alerts"                 OPERATOR => librato_alerts::create;
    GET  "/v1/alerts/status"          VIEWER => librato_alerts::status;
    GET  "/v1/alerts/{id}"            VIEWER => librato_alerts::show;
    PUT  "/v1/alerts/{id}"            OPERATOR => librato_alerts::update;
    DELETE "/v1/alerts/{id}"          OPERATOR => librato_alerts::delete;
    POST "/v1/alerts/{id}/clear"      OPERATOR => librato_alerts::clear;

    POST "/agent/v1/register"         PUBLIC => agent_api::register;
    POST "/agent/v1/heartbeat"        AGENT  => agent_api::heartbeat;
    POST "/agent/v1/claim"            AGENT  => agent_api::claim;
    POST "/agent/v1/log"              AGENT  => agent_api::log;
    POST "/agent/v1/finish"           AGENT  => agent_api::finish;
    GET  "/agent/v1/binary"           PUBLIC => agent_api::binary;
}
