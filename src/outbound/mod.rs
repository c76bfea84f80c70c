//! Delivery to the upstream smart hosts.
