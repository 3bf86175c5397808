// The official TypeScript MCP SDK's client signing in to the dev issuer, headless, and calling a tool.
//
//   node ts_sdk_client.mjs SDK_DIR SERVER_URL TOOL code USER
//   node ts_sdk_client.mjs SDK_DIR SERVER_URL TOOL client_credentials CLIENT_ID SECRET ISSUER
//
// SDK_DIR holds node_modules/@modelcontextprotocol/sdk (`npm install @modelcontextprotocol/sdk`).
// The SDK's own auth() does the discovery, metadata validation (zod), registration, PKCE and token
// exchange; this provider only plays the browser (it reads the authorization redirect itself).
// Prints one JSON line: the tool's structured result and what the flow stored.
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [sdkDir, serverUrl, tool, grant, user, secret, issuer] = process.argv.slice(2);
const esm = (p) => import(pathToFileURL(join(sdkDir, "node_modules/@modelcontextprotocol/sdk/dist/esm", p)).href);
const { Client } = await esm("client/index.js");
const { StreamableHTTPClientTransport } = await esm("client/streamableHttp.js");
const { UnauthorizedError } = await esm("client/auth.js");
const { ClientCredentialsProvider } = await esm("client/auth-extensions.js");

const redirectUrl = "http://127.0.0.1/callback";
const saved = { states: [] };
const codeFlow = {
  get redirectUrl() {
    return redirectUrl;
  },
  get clientMetadata() {
    return {
      client_name: "ts-sdk test",
      redirect_uris: [redirectUrl],
      grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"],
    };
  },
  state() {
    const state = `ts-${Math.random().toString(36).slice(2)}`;
    saved.states.push(state);
    return state;
  },
  clientInformation: () => saved.client,
  saveClientInformation: (info) => {
    saved.client = info;
  },
  tokens: () => saved.tokens,
  saveTokens: (tokens) => {
    saved.tokens = tokens;
  },
  saveCodeVerifier: (verifier) => {
    saved.verifier = verifier;
  },
  codeVerifier: () => saved.verifier,
  async redirectToAuthorization(url) {
    url.searchParams.set("login_hint", user);
    saved.authorization = Object.fromEntries(url.searchParams);
    const response = await fetch(url, { redirect: "manual" });
    const answer = new URL(response.headers.get("location"));
    if (answer.searchParams.get("error")) throw new Error(answer.searchParams.get("error_description"));
    if (answer.searchParams.get("state") !== saved.states.at(-1)) throw new Error("state not echoed");
    saved.code = answer.searchParams.get("code");
    saved.iss = answer.searchParams.get("iss");
  },
};

const provider =
  grant === "client_credentials"
    ? new ClientCredentialsProvider({ clientId: user, clientSecret: secret, expectedIssuer: issuer })
    : codeFlow;

async function connected() {
  const client = new Client({ name: "ts-sdk-test", version: "0.0.0" });
  const transport = new StreamableHTTPClientTransport(new URL(serverUrl), { authProvider: provider });
  await client.connect(transport);
  return { client, transport };
}

const signIn = new StreamableHTTPClientTransport(new URL(serverUrl), { authProvider: provider });
try {
  const first = new Client({ name: "ts-sdk-test", version: "0.0.0" });
  await first.connect(signIn); // the client-credentials provider signs in without a redirect
  await first.close();
} catch (error) {
  if (!(error instanceof UnauthorizedError)) throw error;
  await signIn.finishAuth(saved.code); // the SDK exchanges the code (with the PKCE verifier) for tokens
}
const { client } = await connected();
const result = await client.callTool({ name: tool, arguments: {} });
console.log(
  JSON.stringify({
    result: result.structuredContent,
    client_id: provider.clientInformation()?.client_id,
    has_secret: Boolean(provider.clientInformation()?.client_secret),
    authorization: saved.authorization,
    iss: saved.iss,
    token_type: provider.tokens()?.token_type,
    has_refresh_token: Boolean(provider.tokens()?.refresh_token),
  }),
);
await client.close();
