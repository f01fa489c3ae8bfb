// The REST client: JSON in and out, the bearer token, and errors as ApiError.

export class ApiError extends Error {
  /** status 0 with code "network": the server could not be reached. */
  constructor(status, code, message, retryAfter = 0) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

/** Human words for an error, for the page. */
export function describe(error) {
  if (!(error instanceof ApiError)) return String(error && error.message || error);
  if (error.code === "network") return "Cannot reach the server. Check your connection.";
  if (error.code === "rate_limited") {
    return `Too many requests: rate limited. Try again in ${error.retryAfter || 1} s.`;
  }
  return error.message || error.code;
}

export class Api {
  constructor(getToken, onUnauthorized) {
    this.getToken = getToken;
    this.onUnauthorized = onUnauthorized;
  }

  async request(method, path, body = undefined, { auth = true } = {}) {
    const headers = {};
    if (body !== undefined) headers["content-type"] = "application/json";
    const token = this.getToken();
    if (auth && token) headers.authorization = `Bearer ${token}`;
    let response;
    try {
      response = await fetch(path, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store", credentials: "omit",
      });
    } catch {
      throw new ApiError(0, "network", "network error");
    }
    return this.#answer(response, auth);
  }

  async #answer(response, auth) {
    if (response.status === 204) return null;
    let data = null;
    const text = await response.text().catch(() => "");
    if (text) {
      try { data = JSON.parse(text); } catch { data = null; }
    }
    if (response.ok) return data;
    const error = data && data.error ? data.error : {};
    const retryAfter = Number(response.headers.get("retry-after") || 0);
    const failure = new ApiError(response.status, error.code || `http_${response.status}`,
                                 error.message || response.statusText, retryAfter);
    if (auth && response.status === 401 && this.onUnauthorized) this.onUnauthorized(failure);
    throw failure;
  }

  get(path) { return this.request("GET", path); }
  post(path, body = {}) { return this.request("POST", path, body); }
  patch(path, body) { return this.request("PATCH", path, body); }
  del(path, body = undefined) { return this.request("DELETE", path, body); }

  /** An authorised GET of bytes, as a blob (media and thumbnails for <img>). */
  async blob(path) {
    let response;
    try {
      response = await fetch(path, {
        headers: { authorization: `Bearer ${this.getToken()}` }, credentials: "omit",
      });
    } catch {
      throw new ApiError(0, "network", "network error");
    }
    if (!response.ok) return this.#answer(response, true);
    return response.blob();
  }

  /** Upload a file with progress (fetch cannot report upload progress; XHR can). */
  upload(file, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/media/upload");
      xhr.setRequestHeader("authorization", `Bearer ${this.getToken()}`);
      xhr.setRequestHeader("content-type", file.type || "application/octet-stream");
      xhr.setRequestHeader("x-filename", encodeURIComponent(file.name || "file"));
      xhr.upload.onprogress = (event) => {
        if (event.lengthComputable) onProgress(event.loaded / event.total);
      };
      xhr.onerror = () => reject(new ApiError(0, "network", "network error"));
      xhr.onload = () => {
        let data = null;
        try { data = JSON.parse(xhr.responseText); } catch { data = null; }
        if (xhr.status >= 200 && xhr.status < 300) { resolve(data); return; }
        const error = data && data.error ? data.error : {};
        reject(new ApiError(xhr.status, error.code || `http_${xhr.status}`,
                            error.message || "upload failed",
                            Number(xhr.getResponseHeader("retry-after") || 0)));
      };
      xhr.send(file);
    });
  }
}
