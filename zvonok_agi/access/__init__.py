"""Who may use the control plane: customers (each of one account) and staff, their passwords,
sessions and the limit on failed sign-ins. Kept in the control plane's store."""
