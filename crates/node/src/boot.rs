//! What a broker gets from the configuration once its data directory is
//! open: on the first start, the default user and vhost (RabbitMQ's
//! `default_user`, `default_pass`, `default_vhost`,
//! `default_permissions.*`) instead of guest/guest on `/`; on every start,
//! the definitions file of `--load-definitions`, imported (what it names is
//! created or brought up to date, as RabbitMQ's `load_definitions`).

use warren_core::Broker;

use crate::Config;

pub fn prepare(broker: &Broker, config: &Config) -> Result<(), String> {
    if broker.first_boot {
        defaults(broker, config).map_err(|e| format!("cannot create the default user and vhost: {e}"))?;
    }
    if let Some(path) = &config.load_definitions {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read definitions {}: {e}", path.display()))?;
        let doc: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("definitions {} are not JSON: {e}", path.display()))?;
        let (x, q, b) = broker
            .import_definitions(&doc)
            .map_err(|e| format!("cannot import definitions {}: {e}", path.display()))?;
        tracing::info!(file = %path.display(), exchanges = x, queues = q, bindings = b, "definitions loaded");
    }
    Ok(())
}

/// The first start made guest/guest on `/`: made as configured instead.
fn defaults(broker: &Broker, config: &Config) -> Result<(), warren_core::broker::AdminError> {
    let (user, vhost) = (config.default_user.as_str(), config.default_vhost.as_str());
    let perms = [
        config.default_permissions_configure.as_str(),
        config.default_permissions_write.as_str(),
        config.default_permissions_read.as_str(),
    ];
    if (user, config.default_pass.as_str(), vhost, perms) == ("guest", "guest", "/", [".*", ".*", ".*"]) {
        return Ok(());
    }
    if vhost != "/" {
        broker.add_vhost(vhost)?;
        broker.delete_vhost("/")?;
    }
    if user != "guest" {
        broker.delete_user("guest")?;
        broker.add_user(user, &config.default_pass)?;
        broker.set_user_tags(user, &["administrator".to_owned()])?;
    } else {
        broker.change_password(user, &config.default_pass)?;
    }
    broker.set_permissions(vhost, user, perms[0], perms[1], perms[2])?;
    tracing::info!(user, vhost, "first start: default user and vhost created");
    Ok(())
}
