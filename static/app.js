/* placeholder: replaced by the web UI */
