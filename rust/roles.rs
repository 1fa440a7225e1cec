//! Roles and what each may do, kept once: the gates ask before answering a read, the
//! workers' `auth.Caller.require` asks through `_core.role_allows`, and the OpenAPI
//! document lists each operation's holders from `_core.ROLE_PERMISSIONS`.

pub const INSTANCE_VIEW: &str = "registry-svc:instance:view";
pub const INSTANCE_EDIT: &str = "registry-svc:instance:edit";
pub const INSTANCE_DELETE: &str = "registry-svc:instance:delete";
pub const DEFINITION_VIEW: &str = "registry-svc:definition:view";
pub const DEFINITION_EDIT: &str = "registry-svc:definition:edit";
pub const DEFINITION_DELETE: &str = "registry-svc:definition:delete";
pub const NODE_VIEW: &str = "registry-svc:node:view";
pub const NODE_DELETE: &str = "registry-svc:node:delete";
/// Token management, metrics, the cluster's state: the admin's alone.
pub const ADMIN: &str = "admin";

/// Every permission, by the name Python gives its constant.
pub const PERMISSIONS: [(&str, &str); 9] = [
    ("INSTANCE_VIEW", INSTANCE_VIEW),
    ("INSTANCE_EDIT", INSTANCE_EDIT),
    ("INSTANCE_DELETE", INSTANCE_DELETE),
    ("DEFINITION_VIEW", DEFINITION_VIEW),
    ("DEFINITION_EDIT", DEFINITION_EDIT),
    ("DEFINITION_DELETE", DEFINITION_DELETE),
    ("NODE_VIEW", NODE_VIEW),
    ("NODE_DELETE", NODE_DELETE),
    ("ADMIN", ADMIN),
];

const EVERYTHING: [&str; 9] = [
    INSTANCE_VIEW,
    INSTANCE_EDIT,
    INSTANCE_DELETE,
    DEFINITION_VIEW,
    DEFINITION_EDIT,
    DEFINITION_DELETE,
    NODE_VIEW,
    NODE_DELETE,
    ADMIN,
];

/// The roles a token may have, with what each grants. A service token sees and registers
/// only instances of its own slug (the only role bound to a slug).
pub const ROLES: [(&str, &[&str]); 3] = [
    ("admin", &EVERYTHING),
    ("service", &[INSTANCE_VIEW, INSTANCE_EDIT, DEFINITION_VIEW]),
    ("proxy", &[INSTANCE_VIEW, NODE_VIEW]),
];

/// The role bound to one slug: its callers see that slug's records only.
pub const SLUG_BOUND: &str = "service";

/// Whether `role` grants `permission` (an unknown role grants nothing).
pub fn allows(role: &str, permission: &str) -> bool {
    ROLES
        .iter()
        .any(|(name, granted)| *name == role && granted.contains(&permission))
}

/// Whether a caller of `role` sees every slug's records (admins and proxies), not one.
pub fn sees_every_slug(role: &str) -> bool {
    role != SLUG_BOUND && ROLES.iter().any(|(name, _)| *name == role)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_grants_what_it_lists_and_nothing_else() {
        assert!(allows("admin", ADMIN) && allows("admin", NODE_DELETE));
        assert!(allows("service", INSTANCE_EDIT) && !allows("service", INSTANCE_DELETE));
        assert!(allows("proxy", NODE_VIEW) && !allows("proxy", INSTANCE_EDIT));
        assert!(!allows("anonymous", INSTANCE_VIEW) && !allows("Admin", ADMIN));
        assert!(sees_every_slug("admin") && sees_every_slug("proxy"));
        assert!(!sees_every_slug("service") && !sees_every_slug("anonymous"));
        let names: Vec<&str> = PERMISSIONS.iter().map(|(_, p)| *p).collect();
        assert_eq!(names, EVERYTHING);
    }
}
