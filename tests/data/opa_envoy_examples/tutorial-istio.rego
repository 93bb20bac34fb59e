package istio.authz

default allow := false

allow if {
  input.parsed_path[0] == "health"
  input.attributes.request.method == "GET"
}

allow if {
  some user_role in _user_roles[_user_name]
  some permission in _role_permissions[user_role]

  permission.method == input.attributes.request.http.method
  permission.path == input.attributes.request.http.path
}

# Underscore prefix used only to signal that rules and functions are
# intended to be referenced only within the same policy, i.e. "private".
# It has no special meaning to OPA.

_user_name := parsed if {
  [_, encoded] := split(input.attributes.request.http.headers.authorization, " ")
  [parsed, _] := split(base64url.decode(encoded), ":")
}

_user_roles := {
  "alice": ["guest"],
  "bob": ["admin"],
}

_role_permissions := {
  "guest": [{"method": "GET", "path": "/productpage"}],
  "admin": [
    {"method": "GET", "path": "/productpage"},
    {"method": "GET", "path": "/api/v1/products"},
  ],
}
