// meshwasm test OpenID Provider: the real npm `oidc-provider` (v8), configured for service-to-service
// OAuth2 (client-credentials grant, JWT and opaque access tokens, JWKS, discovery, RFC 7662
// introspection) plus a small admin API so tests can rotate signing keys.
//
// Usage:  node provider.mjs [port]          (port 0 or absent: a free port is chosen)
//   env   MESHWASM_OIDC_PORT    port when no argv is given
//         MESHWASM_OIDC_CONFIG  JSON, all optional:
//           { "clients":   [{ "client_id", "client_secret", "token_endpoint_auth_method", "scope" }],
//             "extra_clients": [ clients added to "clients" (or to the defaults), e.g. a private_key_jwt
//                               client: { "client_id", "token_endpoint_auth_method": "private_key_jwt",
//                                         "jwks": { "keys": [public JWK] } } ],
//             "resources": { "<resource indicator>": { "alg": "RS256"|"ES256", "scope": "a b",
//                                                      "ttl": seconds, "format": "jwt"|"opaque",
//                                                      "audience": "<aud>" } },
//             "client_credentials_ttl": seconds   (opaque tokens issued without a resource) }
//
// Prints one line `meshwasm-oidc listening on http://127.0.0.1:<port>` when ready; the issuer is that URL.
//
// Admin API (loopback test use only):
//   POST /admin/rotate   new RS256 and ES256 signing keys become current; previous keys stay published
//                        in the JWKS (tokens signed before the rotation still verify). Returns {kids}.
//   POST /admin/retire   drops every non-current key from the JWKS. Returns {kids}.
//   GET  /admin/keys     {current: {RS256: kid, ES256: kid}, published: [kid...]}
//   POST /admin/fail?status=503&count=N[&endpoint=token|introspection]   the next N requests to that
//                        endpoint (default token) get that status (N=-1: until count=0), to script outages.
//   POST /admin/delay?ms=M[&endpoint=token|introspection]   answers of that endpoint are delayed by M ms
//                        (0: no delay), to script timeouts.
//   GET  /admin/stats    {token_requests: n, introspection_requests: n}
// Also enabled: RFC 7009 revocation at /token/revocation (revoked opaque tokens introspect inactive).

import http from 'node:http';
import crypto from 'node:crypto';
import Provider from 'oidc-provider';

const DEFAULT_CLIENTS = [
  { client_id: 'meshwasm-basic', client_secret: 'basic-secret', token_endpoint_auth_method: 'client_secret_basic' },
  { client_id: 'meshwasm-post', client_secret: 'post-secret', token_endpoint_auth_method: 'client_secret_post' },
  // Client id and secret with characters that RFC 6749 §2.3.1 requires to be form-urlencoded before
  // the Basic credentials are base64-encoded.
  { client_id: 'svc:a b', client_secret: 'p@ss:w+rd/%&=', token_endpoint_auth_method: 'client_secret_basic' },
  // A resource server that introspects tokens.
  { client_id: 'meshwasm-rs', client_secret: 'rs-secret', token_endpoint_auth_method: 'client_secret_basic' },
];

const DEFAULT_RESOURCES = {
  'urn:meshwasm:rs256': { alg: 'RS256', scope: 'read write admin' },
  'urn:meshwasm:es256': { alg: 'ES256', scope: 'read write admin' },
  'urn:meshwasm:opaque': { format: 'opaque', scope: 'read write admin' },
};

const port = Number(process.argv[2] ?? process.env.MESHWASM_OIDC_PORT ?? 0);
const config = JSON.parse(process.env.MESHWASM_OIDC_CONFIG || '{}');
const clients = [...(config.clients ?? DEFAULT_CLIENTS), ...(config.extra_clients ?? [])].map((c) => ({
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  ...c,
}));
const resources = config.resources ?? DEFAULT_RESOURCES;
const defaultTtl = Number(config.client_credentials_ttl ?? 600);

let generation = 0;
function newKeys() {
  generation += 1;
  const stamp = `${generation}-${crypto.randomBytes(4).toString('hex')}`;
  const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
  return {
    RS256: { ...rsa, kid: `rs256-${stamp}`, alg: 'RS256', use: 'sig' },
    ES256: { ...ec, kid: `es256-${stamp}`, alg: 'ES256', use: 'sig' },
  };
}

let current = newKeys();
let previous = []; // older keys still published for verification

const stats = { token_requests: 0, introspection_requests: 0 };
const failures = { token: { status: 0, count: 0 }, introspection: { status: 0, count: 0 } };
const delays = { token: 0, introspection: 0 };
let issuer;
let provider;
let handler;

function buildProvider() {
  const jwks = { keys: [current.RS256, current.ES256, ...previous] };
  const p = new Provider(issuer, {
    clients,
    jwks,
    // Scopes usable on opaque tokens issued without a resource indicator.
    scopes: ['openid', 'offline_access', 'read', 'write', 'admin'],
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => undefined,
        useGrantedResource: () => false,
        getResourceServerInfo: (ctx, resourceIndicator) => {
          const rs = resources[resourceIndicator];
          if (!rs) throw new Provider.errors.InvalidTarget(`unknown resource ${resourceIndicator}`);
          const info = {
            scope: rs.scope ?? '',
            audience: rs.audience ?? resourceIndicator,
            accessTokenTTL: Number(rs.ttl ?? defaultTtl),
            accessTokenFormat: rs.format ?? 'jwt',
          };
          if (info.accessTokenFormat === 'jwt') {
            const alg = rs.alg ?? 'RS256';
            info.jwt = { sign: { alg, kid: current[alg].kid } };
          }
          return info;
        },
      },
    },
    // Per resource server lifetime when it has one (a fixed number here would override it).
    ttl: { ClientCredentials: (ctx, token) => token.resourceServer?.accessTokenTTL || defaultTtl },
    // Structured JSON errors are what the filters parse; keep them.
    renderError: (ctx, out) => {
      ctx.type = 'json';
      ctx.body = out;
    },
  });
  p.proxy = false;
  p.on('server_error', (ctx, err) => console.error('oidc server_error', err));
  p.on('grant.error', (ctx, err) => console.error('oidc grant.error', err.message, err.error_description ?? ''));
  return p;
}

function publicJwk(jwk) {
  const { d, p, q, dp, dq, qi, ...pub } = jwk;
  return pub;
}

function json(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

function admin(req, res, url) {
  const path = url.pathname;
  if (path === '/admin/rotate' && req.method === 'POST') {
    previous = [current.RS256, current.ES256, ...previous];
    current = newKeys();
    provider = buildProvider();
    handler = provider.callback();
    return json(res, 200, { kids: [current.RS256.kid, current.ES256.kid, ...previous.map((k) => k.kid)] });
  }
  if (path === '/admin/retire' && req.method === 'POST') {
    previous = [];
    provider = buildProvider();
    handler = provider.callback();
    return json(res, 200, { kids: [current.RS256.kid, current.ES256.kid] });
  }
  if (path === '/admin/keys') {
    return json(res, 200, {
      current: { RS256: current.RS256.kid, ES256: current.ES256.kid },
      published: [current.RS256, current.ES256, ...previous].map((k) => k.kid),
      public: [current.RS256, current.ES256, ...previous].map(publicJwk),
    });
  }
  const endpoint = url.searchParams.get('endpoint') ?? 'token';
  if ((path === '/admin/fail' || path === '/admin/delay') && !(endpoint in delays)) {
    return json(res, 400, { error: 'endpoint must be token or introspection' });
  }
  if (path === '/admin/fail' && req.method === 'POST') {
    failures[endpoint] = {
      status: Number(url.searchParams.get('status') ?? 503),
      count: Number(url.searchParams.get('count') ?? 1),
    };
    return json(res, 200, failures[endpoint]);
  }
  if (path === '/admin/delay' && req.method === 'POST') {
    delays[endpoint] = Number(url.searchParams.get('ms') ?? 0);
    return json(res, 200, { endpoint, ms: delays[endpoint] });
  }
  if (path === '/admin/stats') {
    return json(res, 200, stats);
  }
  return json(res, 404, { error: 'not_found' });
}

const server = http.createServer((req, res) => {
  // oidc-provider derives endpoint URLs from the Host header; pin it to the issuer so discovery and
  // tokens look the same however the provider is reached (directly, or through Envoy with another
  // :authority).
  req.headers.host = new URL(issuer).host;
  const url = new URL(req.url, issuer);
  if (url.pathname.startsWith('/admin/')) return admin(req, res, url);
  const endpoint = { '/token': 'token', '/token/introspection': 'introspection' }[url.pathname];
  if (!endpoint) return handler(req, res);
  stats[`${endpoint}_requests`] += 1;
  const answer = () => {
    const failure = failures[endpoint];
    if (failure.count !== 0) {
      if (failure.count > 0) failure.count -= 1;
      return json(res, failure.status, { error: 'temporarily_unavailable', error_description: 'scripted failure' });
    }
    return handler(req, res);
  };
  if (delays[endpoint] > 0) return setTimeout(answer, delays[endpoint]);
  return answer();
});

server.listen(port, '127.0.0.1', () => {
  issuer = `http://127.0.0.1:${server.address().port}`;
  provider = buildProvider();
  handler = provider.callback();
  console.log(`meshwasm-oidc listening on ${issuer}`);
});

for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
